//! Job lifecycle through gRPC on real nodes: retries with backoff, dead jobs and
//! redrive, delays, idempotency, cancel, pause/resume, progress, stats, retention,
//! and restarts in the middle of a backoff, a delay and a pause.

use std::time::Duration;

use taskraft_broker::queue::Backoff;
use taskraft_proto::v1 as pb;
use taskraft_tests::*;
use tonic::Code;

async fn lease_one(c: &mut Clients, queue: &str, vis: u64) -> pb::LeasedJob {
    let mut jobs = c
        .broker
        .lease(lease(queue, 1, vis, 10_000))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "a job of {queue} should become leasable");
    jobs.remove(0)
}

async fn nack(c: &mut Clients, l: &pb::LeasedJob, error: &str, dead: bool) -> pb::NackResponse {
    c.broker
        .nack(pb::NackRequest {
            job_id: l.job_id.clone(),
            lease_id: l.lease_id.clone(),
            error: error.into(),
            retry_after_ms: 0,
            dead_letter: dead,
        })
        .await
        .unwrap()
        .into_inner()
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls GetJob until `pred` holds (generous bound).
async fn wait_job(
    c: &mut Clients,
    id: &str,
    what: &str,
    pred: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    eventually_ok(&format!("job {id} {what}"), SOON, || {
        let mut c = c.clone();
        let pred = &pred;
        async move {
            let j = get_job(&mut c, id).await;
            if pred(&j) {
                Ok(j)
            } else {
                Err(format!("{j:?}"))
            }
        }
    })
    .await
}

#[tokio::test]
async fn nack_backs_off_exponentially_then_the_job_dies_with_its_error() {
    let clock = JumpClock::new();
    let node = InProcNode::start_with(|c| {
        c.clock = clock.handle();
        c.api.backoff = Backoff {
            base_ms: 60_000,
            max_ms: 3_600_000,
        }
    })
    .await;
    let mut c = node.clients().await;
    let mut j = job("retry", "x");
    j.max_attempts = 3;
    let id = c.broker.enqueue(j).await.unwrap().into_inner().job_id;

    for attempt in 1..=2u32 {
        let l = lease_one(&mut c, "retry", 30_000).await;
        assert_eq!(l.attempt, attempt);
        let t0 = clock.wall_ms();
        let r = nack(&mut c, &l, &format!("boom {attempt}"), false).await;
        let t1 = clock.wall_ms();
        assert_eq!(r.state, pb::JobState::Scheduled as i32);
        let job = get_job(&mut c, &id).await;
        assert_eq!(job.state, pb::JobState::Scheduled as i32);
        assert_eq!(job.run_at_ms, r.run_at_ms);
        // base × 2^(attempt-1), ±20 %, from the leader's time of the nack (between t0 and t1).
        let base = 60_000u64 << (attempt - 1);
        let (lo, hi) = (t0 + base * 8 / 10, t1 + base * 12 / 10);
        assert!(
            (lo..=hi).contains(&job.run_at_ms),
            "attempt {attempt}: run_at {} not in [{lo}, {hi}]",
            job.run_at_ms
        );
        // The node's clock jumps past the retry.
        clock.advance(Duration::from_millis(base * 12 / 10 + 1_000));
    }
    let l = lease_one(&mut c, "retry", 30_000).await;
    assert_eq!(l.attempt, 3);
    let r = nack(&mut c, &l, "boom 3", false).await;
    assert_eq!(r.state, pb::JobState::Dead as i32);
    let job = get_job(&mut c, &id).await;
    assert_eq!(
        (job.state, job.attempt, job.last_error.as_str()),
        (pb::JobState::Dead as i32, 3, "boom 3")
    );
}

#[tokio::test]
async fn expired_leases_use_up_attempts_and_count_as_expirations() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let mut j = job("crash", "x");
    j.max_attempts = 2;
    let id = c.broker.enqueue(j).await.unwrap().into_inner().job_id;
    lease_one(&mut c, "crash", 200).await;
    // The first lease expires: the job comes back by itself as attempt 2.
    let second = lease_one(&mut c, "crash", 200).await;
    assert_eq!(second.attempt, 2);
    let job = wait_job(&mut c, &id, "to die", |j| {
        j.state == pb::JobState::Dead as i32
    })
    .await;
    assert_eq!(job.expirations, 2);
    assert!(
        job.last_error.contains("lease expired"),
        "{}",
        job.last_error
    );
}

#[tokio::test]
async fn dead_jobs_page_retry_and_redrive() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            c.broker
                .enqueue(job("dlq", &format!("p{i}")))
                .await
                .unwrap()
                .into_inner()
                .job_id,
        );
    }
    for _ in 0..5 {
        let l = lease_one(&mut c, "dlq", 30_000).await;
        assert_eq!(
            nack(&mut c, &l, "fatal", true).await.state,
            pb::JobState::Dead as i32
        );
    }
    assert_eq!(stats(&mut c, "dlq").await.dead, 5);

    // Pages of 2, oldest first, until the token runs out.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .admin
            .list_jobs(pb::ListJobsRequest {
                queue: "dlq".into(),
                state: pb::JobState::Dead as i32,
                limit: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 2);
        assert!(page.jobs.iter().all(|j| j.last_error == "fatal"));
        seen.extend(page.jobs.into_iter().map(|j| j.job_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids, "every dead job once, in enqueue order");

    let retried = c
        .admin
        .retry_job(pb::RetryJobRequest {
            job_id: ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (retried.state, retried.attempt),
        (pb::JobState::Ready as i32, 0)
    );
    let err = c
        .admin
        .retry_job(pb::RetryJobRequest {
            job_id: ids[0].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "retrying a ready job");
    let n = c
        .admin
        .redrive_dead_jobs(pb::RedriveDeadJobsRequest {
            queue: "dlq".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.count, 4);
    let st = stats(&mut c, "dlq").await;
    assert_eq!((st.ready, st.dead), (5, 0));
}

#[tokio::test]
async fn delayed_job_stays_scheduled_across_a_restart_and_becomes_ready_by_itself() {
    let clock = JumpClock::new();
    let mut node = InProcNode::start_with(|c| c.clock = clock.handle()).await;
    let mut c = node.clients().await;
    let mut j = job("delay", "later");
    j.delay_ms = 60_000;
    let id = c.broker.enqueue(j).await.unwrap().into_inner().job_id;
    let mut at = job("delay", "at");
    at.run_at_ms = clock.wall_ms() + 90_000;
    let at_id = c.broker.enqueue(at).await.unwrap().into_inner().job_id;
    let job0 = get_job(&mut c, &id).await;
    assert_eq!(job0.state, pb::JobState::Scheduled as i32);
    assert!(c
        .broker
        .lease(lease("delay", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .is_empty());

    node.restart().await;
    let mut c = node.clients().await;
    let job1 = get_job(&mut c, &id).await;
    assert_eq!(job1.state, pb::JobState::Scheduled as i32);
    assert_eq!(job1.run_at_ms, job0.run_at_ms);
    // No call touches the queue: once the node's clock passes both, the leader's tick
    // makes them ready.
    clock.advance(Duration::from_secs(100));
    let j = wait_job(&mut c, &id, "to become ready", |j| {
        j.state == pb::JobState::Ready as i32
    })
    .await;
    assert!(j.run_at_ms >= job0.run_at_ms);
    wait_job(&mut c, &at_id, "to become ready", |j| {
        j.state == pb::JobState::Ready as i32
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_under_32_racing_enqueues_creates_one_job() {
    let node = InProcNode::start().await;
    let c = node.clients().await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut j = job("idem", &format!("attempt {i}"));
            j.idempotency_key = "order-42".into();
            c.broker.enqueue(j).await.unwrap().into_inner()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let created: Vec<_> = results.iter().filter(|r| !r.duplicate).collect();
    assert_eq!(created.len(), 1, "exactly one enqueue creates the job");
    assert!(results.iter().all(|r| r.job_id == created[0].job_id));
    let mut c = c.clone();
    assert_eq!(stats(&mut c, "idem").await.ready, 1);

    // In a batch too: the second job with the same key is a duplicate of the first.
    let mut a = job("idem", "a");
    a.idempotency_key = "k2".into();
    let mut b = job("idem", "b");
    b.idempotency_key = "k2".into();
    let r = c
        .broker
        .enqueue_batch(pb::EnqueueBatchRequest { jobs: vec![a, b] })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.results[0].duplicate && r.results[1].duplicate);
    assert_eq!(r.results[0].job_id, r.results[1].job_id);
    // The same key on another queue is another job.
    let mut other = job("idem-other", "x");
    other.idempotency_key = "order-42".into();
    assert!(
        !c.broker
            .enqueue(other)
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
}

/// An Enqueue retried with its request id (as the SDKs retry after UNAVAILABLE, when
/// the first attempt may have committed) stores one job; an idempotency key, when set,
/// decides instead; and what would make a request id unsafe is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_enqueue_with_its_request_id_stores_one_job() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let with_id = |payload: &str, request_id: &str| {
        let mut j = job("retried", payload);
        j.request_id = request_id.into();
        j
    };
    let first = c
        .broker
        .enqueue(with_id("a", "req-1"))
        .await
        .unwrap()
        .into_inner();
    let retry = c
        .broker
        .enqueue(with_id("a", "req-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate && retry.duplicate, "{first:?} {retry:?}");
    assert_eq!(first.job_id, retry.job_id);
    let other = c
        .broker
        .enqueue(with_id("b", "req-2"))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.duplicate && other.job_id != first.job_id);
    // In a batch, each job's own request id.
    let r = c
        .broker
        .enqueue_batch(pb::EnqueueBatchRequest {
            jobs: vec![with_id("a", "req-1"), with_id("c", "req-3")],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.results[0].duplicate && r.results[0].job_id == first.job_id);
    assert!(!r.results[1].duplicate);
    // An idempotency key decides over the request id.
    let mut keyed = with_id("d", "req-1");
    keyed.idempotency_key = "order-7".into();
    let keyed = c.broker.enqueue(keyed).await.unwrap().into_inner();
    assert!(!keyed.duplicate && keyed.job_id != first.job_id);
    assert_eq!(stats(&mut c, "retried").await.ready, 4);

    let mut reserved = job("retried", "x");
    reserved.idempotency_key = "request-id:req-1".into();
    let e = c.broker.enqueue(reserved).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("idempotency_key"), "{e:?}");
    let e = c
        .broker
        .enqueue(with_id("x", &"r".repeat(201)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("request_id"), "{e:?}");
}

/// An Ack resent with the same lease after it applied (a client whose answer was lost
/// retries) succeeds again and keeps the first result; a Nack likewise answers where
/// the job went. Only another use of the lease is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_ack_or_nack_answers_as_the_first_did() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    c.broker.enqueue(job("resent", "a")).await.unwrap();
    c.broker.enqueue(job("resent", "b")).await.unwrap();
    let a = lease_one(&mut c, "resent", 30_000).await;
    let b = lease_one(&mut c, "resent", 30_000).await;
    for result in ["first", "second"] {
        c.broker
            .ack(pb::AckRequest {
                job_id: a.job_id.clone(),
                lease_id: a.lease_id.clone(),
                result: result.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("ack ({result}): {e:?}"));
    }
    assert_eq!(&get_job(&mut c, &a.job_id).await.result[..], b"first");
    let first = nack(&mut c, &b, "boom", true).await;
    let again = nack(&mut c, &b, "boom", true).await;
    assert_eq!(first, again);
    assert_eq!(first.state, pb::JobState::Dead as i32);
    let err = c
        .broker
        .ack(pb::AckRequest {
            job_id: b.job_id.clone(),
            lease_id: b.lease_id.clone(),
            result: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn cancel_ready_and_leased_jobs() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let ready = c
        .broker
        .enqueue(job("cx", "a"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let j = c
        .broker
        .cancel_job(pb::CancelJobRequest {
            job_id: ready.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.state, pb::JobState::Cancelled as i32);
    let err = c
        .broker
        .cancel_job(pb::CancelJobRequest {
            job_id: ready.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    c.broker.enqueue(job("cx", "b")).await.unwrap();
    let l = lease_one(&mut c, "cx", 30_000).await;
    c.broker
        .cancel_job(pb::CancelJobRequest {
            job_id: l.job_id.clone(),
        })
        .await
        .unwrap();
    let err = c
        .broker
        .extend_lease(pb::ExtendLeaseRequest {
            job_id: l.job_id.clone(),
            lease_id: l.lease_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("cancelled"), "{}", err.message());
    assert_eq!(err.metadata().get("taskraft-reason").unwrap(), "cancelled");
    let err = c
        .broker
        .ack(pb::AckRequest {
            job_id: l.job_id.clone(),
            lease_id: l.lease_id.clone(),
            result: Default::default(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("cancelled"));
    assert_eq!(stats(&mut c, "cx").await.cancelled, 2);
    // A cancelled job can be retried.
    let j = c
        .admin
        .retry_job(pb::RetryJobRequest { job_id: ready })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.state, pb::JobState::Ready as i32);
}

#[tokio::test]
async fn pause_survives_restart_and_lease_fills_from_queues_in_order() {
    let mut node = InProcNode::start().await;
    let mut c = node.clients().await;
    let st = c
        .admin
        .pause_queue(pb::PauseQueueRequest { queue: "pz".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(st.paused);
    c.broker.enqueue(job("pz", "x")).await.unwrap();
    assert!(c
        .broker
        .lease(lease("pz", 1, 30_000, 300))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .is_empty());

    node.restart().await;
    let mut c = node.clients().await;
    let st = stats(&mut c, "pz").await;
    assert!(st.paused);
    assert_eq!(st.ready, 1, "a paused queue accepts enqueues");
    assert!(c
        .broker
        .lease(lease("pz", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .is_empty());
    c.admin
        .resume_queue(pb::ResumeQueueRequest { queue: "pz".into() })
        .await
        .unwrap();
    assert_eq!(
        c.broker
            .lease(lease("pz", 1, 30_000, 0))
            .await
            .unwrap()
            .into_inner()
            .jobs
            .len(),
        1
    );

    for i in 0..2 {
        c.broker
            .enqueue(job("first", &format!("f{i}")))
            .await
            .unwrap();
    }
    for i in 0..5 {
        c.broker
            .enqueue(job("second", &format!("s{i}")))
            .await
            .unwrap();
    }
    let mut req = lease("first", 5, 30_000, 0);
    req.queues.push("second".into());
    let got = c.broker.lease(req).await.unwrap().into_inner().jobs;
    let queues: Vec<&str> = got.iter().map(|j| j.queue.as_str()).collect();
    assert_eq!(queues, ["first", "first", "second", "second", "second"]);

    let all = c
        .admin
        .list_queues(pb::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner()
        .queues;
    let names: Vec<&str> = all.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(names, ["first", "pz", "second"]);
    let second = all.iter().find(|q| q.queue == "second").unwrap();
    assert_eq!((second.ready, second.leased), (2, 3));
}

#[tokio::test]
async fn finished_jobs_are_removed_after_their_ttl() {
    let clock = JumpClock::new();
    let node = InProcNode::start_with(|c| {
        c.clock = clock.handle();
        c.api.retention.result_ttl_ms = 60_000;
        c.api.retention.failure_ttl_ms = 90_000;
    })
    .await;
    let mut c = node.clients().await;
    let ok = c
        .broker
        .enqueue(job("ttl", "ok"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    c.broker.enqueue(job("ttl", "bad")).await.unwrap();
    let jobs = c
        .broker
        .lease(lease("ttl", 2, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    for l in jobs {
        if l.job_id == ok {
            c.broker
                .ack(pb::AckRequest {
                    job_id: l.job_id,
                    lease_id: l.lease_id,
                    result: "r".into(),
                })
                .await
                .unwrap();
        } else {
            nack(&mut c, &l, "fatal", true).await;
        }
    }
    let j = get_job(&mut c, &ok).await;
    assert!(j.expires_at_ms >= j.finished_at_ms + 60_000);
    // The node's clock jumps past both.
    clock.advance(Duration::from_secs(100));
    eventually_ok("the ttl queue to empty", SOON, || {
        let mut c = c.clone();
        async move {
            let queues = c
                .admin
                .list_queues(pb::ListQueuesRequest {})
                .await
                .unwrap()
                .into_inner()
                .queues;
            if queues.iter().all(|q| q.queue != "ttl") {
                Ok(())
            } else {
                Err(format!("{queues:?}"))
            }
        }
    })
    .await;
    let err = c
        .broker
        .get_job(pb::GetJobRequest { job_id: ok })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        stats(&mut c, "ttl").await,
        pb::QueueStats {
            queue: "ttl".into(),
            ..Default::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_backoff_keeps_the_retry_schedule() {
    let dir = tempfile::tempdir().unwrap();
    // A retry 8-12 s away (10 s ±20 %): the restart normally ends long before.
    let mut node = ProcessNode::spawn(&dir.path().join("n"), &["--retry-base", "10s"]).await;
    node.wait_ready().await;
    let mut c = node.clients().await;
    let id = c
        .broker
        .enqueue(job("bk", "x"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let l = lease_one(&mut c, "bk", 30_000).await;
    nack(&mut c, &l, "try later", false).await;
    let before = get_job(&mut c, &id).await;
    assert_eq!(before.state, pb::JobState::Scheduled as i32);

    node.kill9();
    node.restart().await;
    node.wait_ready().await;
    let mut c = node.clients().await;
    let looked_at = wall_ms();
    let after = get_job(&mut c, &id).await;
    assert_eq!(
        (after.run_at_ms, after.attempt),
        (before.run_at_ms, 1),
        "{after:?}"
    );
    // Still waiting, unless the restart took until the retry was due (a machine that
    // slow makes the job ready on time, which is right too).
    if looked_at + 1_000 < before.run_at_ms {
        assert_eq!(after.state, before.state, "{after:?}");
    }
    let again = c
        .broker
        .lease(lease("bk", 1, 30_000, 30_000))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(again.len(), 1, "the retry is leasable by its time");
    assert_eq!((&again[0].job_id, again[0].attempt), (&id, 2));
}

/// `stop` returns only once the node has let go of its data files: an embedding
/// program (or a test) that starts a node again on the same dir right away must not
/// find them still locked by a handle the old node drops on another task a moment
/// later (openraft drops the state machine on its own worker after `Raft::shutdown`
/// returns, and an apply or commit on a blocking thread may still hold the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_has_let_go_of_its_data_files() {
    let mut node = InProcNode::start().await;
    let mut acked = 0;
    for round in 0..10 {
        let c = node.clients().await;
        // Writers still sending when the node stops: applies are in flight.
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let mut c = c.clone();
                tokio::spawn(async move {
                    let mut ok = 0u64;
                    for i in 0.. {
                        match c
                            .broker
                            .enqueue(job("files", &format!("{round}-{w}-{i}")))
                            .await
                        {
                            Ok(_) => ok += 1,
                            Err(_) => break,
                        }
                    }
                    ok
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        node.stop().await;
        for file in ["raft-log.redb", "state.redb"] {
            let path = node.dir.path().join(file);
            let db = taskraft_broker::storage::open_redb(&path, 1 << 20, false, file);
            assert!(
                db.is_ok(),
                "round {round}: {file} still held after stop: {:?}",
                db.err()
            );
        }
        for w in writers {
            acked += w.await.unwrap();
        }
        node.restart().await;
    }
    let mut c = node.clients().await;
    assert!(stats(&mut c, "files").await.ready >= acked);
}
