//! The core job API through gRPC on a real in-process node: ordering, long polls,
//! leases and fencing, nack, batches, validation, auth, health.

use std::time::Duration;

use taskraft_proto::v1 as pb;
use taskraft_tests::*;
use tonic::Code;

#[tokio::test]
async fn serves_by_priority_then_fifo() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    for (p, prio) in [("a", 0), ("b", 5), ("c", 0), ("d", 9), ("e", 5)] {
        let mut j = job("q", p);
        j.priority = prio;
        c.broker.enqueue(j).await.unwrap();
    }
    let got = c
        .broker
        .lease(lease("q", 10, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let order: Vec<&[u8]> = got.iter().map(|j| &j.payload[..]).collect();
    assert_eq!(order, [&b"d"[..], b"b", b"e", b"a", b"c"]);
    assert!(got.iter().all(|j| j.attempt == 1 && j.lease_id.len() == 16));
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_a_job_arrives() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let mut producer = c.clone();
    let started = tokio::time::Instant::now();
    let poll = tokio::spawn(async move { c.broker.lease(lease("lp", 1, 30_000, 20_000)).await });
    // The job arrives while the Lease waits for one.
    eventually("the Lease call to wait", SOON, || async {
        (node.lease_calls_on("lp") == 1).then_some(())
    })
    .await;
    producer.broker.enqueue(job("lp", "hello")).await.unwrap();
    let got = poll.await.unwrap().unwrap().into_inner().jobs;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"hello");
    // Far less than the 20 s wait: it woke on the enqueue.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn long_poll_with_nothing_returns_empty_after_wait() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let started = tokio::time::Instant::now();
    let got = c
        .broker
        .lease(lease("empty", 1, 30_000, 300))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(got.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The worker that polled in vain is listed, holding nothing.
    let w = listed_worker(&mut c, "test-worker").await;
    assert_eq!(
        (w.queues.as_slice(), w.jobs_in_hand),
        (&["empty".to_string()][..], 0),
        "{w:?}"
    );
}

#[tokio::test]
async fn expired_lease_is_redelivered_with_new_lease_id_and_stale_ack_is_fenced() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let id = c
        .broker
        .enqueue(job("exp", "x"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let first = c
        .broker
        .lease(lease("exp", 1, 300, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    assert_eq!(first.attempt, 1);
    // No traffic at all: the leader's tick expires the lease and the job is ready again.
    let second = c
        .broker
        .lease(lease("exp", 1, 30_000, 10_000))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    assert_eq!(second.job_id, id);
    assert_eq!(second.attempt, 2);
    assert_ne!(second.lease_id, first.lease_id);
    let job = get_job(&mut c, &id).await;
    assert_eq!(job.expirations, 1);

    let stale = c
        .broker
        .ack(pb::AckRequest {
            job_id: id.clone(),
            lease_id: first.lease_id.clone(),
            result: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(
        stale.message().contains("not the current lease"),
        "{}",
        stale.message()
    );
    assert_eq!(
        get_job(&mut c, &id).await.state,
        pb::JobState::Leased as i32
    );
    c.broker
        .ack(pb::AckRequest {
            job_id: id.clone(),
            lease_id: second.lease_id,
            result: "done".into(),
        })
        .await
        .unwrap();
    let job = get_job(&mut c, &id).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    assert_eq!(&job.result[..], b"done");
}

/// Of two jobs leased together, the one whose lease was extended stays leased when the
/// node's clock jumps past their first deadline; the other's lease runs out.
#[tokio::test]
async fn extend_keeps_the_lease_past_its_first_deadline() {
    let clock = JumpClock::new();
    let node = InProcNode::start_with(|c| c.clock = clock.handle()).await;
    let mut c = node.clients().await;
    for payload in ["extended", "not extended"] {
        c.broker.enqueue(job("ext", payload)).await.unwrap();
    }
    let mut leased = c
        .broker
        .lease(lease("ext", 2, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(leased.len(), 2);
    let (l, other) = (leased.remove(0), leased.remove(0));
    assert_eq!(&l.payload[..], b"extended");
    let ext = c
        .broker
        .extend_lease(pb::ExtendLeaseRequest {
            job_id: l.job_id.clone(),
            lease_id: l.lease_id.clone(),
            visibility_timeout_ms: 120_000,
            progress: 40,
            progress_message: "halfway-ish".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ext.lease_deadline_ms >= l.lease_deadline_ms + 90_000);
    clock.advance(Duration::from_secs(60));
    eventually("the lease not extended to run out", SOON, || {
        let mut c = c.clone();
        let id = other.job_id.clone();
        async move {
            let j = get_job(&mut c, &id).await;
            (j.state == pb::JobState::Ready as i32 && j.expirations == 1).then_some(())
        }
    })
    .await;
    let job = get_job(&mut c, &l.job_id).await;
    assert_eq!(job.state, pb::JobState::Leased as i32);
    assert_eq!(
        (job.progress, job.progress_message.as_str()),
        (40, "halfway-ish")
    );
    c.broker
        .ack(pb::AckRequest {
            job_id: l.job_id,
            lease_id: l.lease_id,
            result: Default::default(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn nack_with_retry_after_schedules_the_retry() {
    let clock = JumpClock::new();
    let node = InProcNode::start_with(|c| c.clock = clock.handle()).await;
    let mut c = node.clients().await;
    c.broker.enqueue(job("nk", "x")).await.unwrap();
    let l = c
        .broker
        .lease(lease("nk", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    let r = c
        .broker
        .nack(pb::NackRequest {
            job_id: l.job_id.clone(),
            lease_id: l.lease_id.clone(),
            error: "transient".into(),
            retry_after_ms: 60_000,
            dead_letter: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, pb::JobState::Scheduled as i32);
    let job = get_job(&mut c, &l.job_id).await;
    assert_eq!(job.state, pb::JobState::Scheduled as i32);
    assert_eq!(job.last_error, "transient");
    assert!(c
        .broker
        .lease(lease("nk", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .is_empty());
    // The node's clock jumps past the retry; the long poll gets the job then.
    clock.advance(Duration::from_secs(61));
    let again = c
        .broker
        .lease(lease("nk", 1, 30_000, 30_000))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    assert_eq!((again.job_id, again.attempt), (l.job_id, 2));
}

#[tokio::test]
async fn batch_enqueue_is_all_or_nothing() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let jobs: Vec<_> = (0..100).map(|i| job("batch", &format!("p{i}"))).collect();
    let res = c
        .broker
        .enqueue_batch(pb::EnqueueBatchRequest { jobs })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.results.len(), 100);
    assert_eq!(stats(&mut c, "batch").await.ready, 100);

    let mut jobs: Vec<_> = (0..10).map(|i| job("batch2", &format!("p{i}"))).collect();
    jobs[7].queue = "bad queue".into();
    let err = c
        .broker
        .enqueue_batch(pb::EnqueueBatchRequest { jobs })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("jobs[7]"), "{}", err.message());
    assert_eq!(
        stats(&mut c, "batch2").await.ready,
        0,
        "nothing of a refused batch is stored"
    );
}

#[tokio::test]
async fn every_bad_input_gets_the_right_code_and_names_the_field() {
    let node = InProcNode::start_with(|c| c.api.max_payload = 1024).await;
    let mut c = node.clients().await;
    let b = &mut c.broker;
    let mut cases: Vec<(String, tonic::Status, Code, &str)> = Vec::new();
    macro_rules! case {
        ($name:expr, $call:expr, $code:expr, $needle:expr) => {
            cases.push(($name.to_string(), $call.await.unwrap_err(), $code, $needle));
        };
    }
    case!(
        "empty queue",
        b.enqueue(job("", "x")),
        Code::InvalidArgument,
        "queue"
    );
    case!(
        "bad queue chars",
        b.enqueue(job("a/b", "x")),
        Code::InvalidArgument,
        "queue"
    );
    case!(
        "long queue",
        b.enqueue(job(&"q".repeat(129), "x")),
        Code::InvalidArgument,
        "128"
    );
    case!(
        "payload too big",
        b.enqueue(job("q", &"x".repeat(2000))),
        Code::InvalidArgument,
        "payload"
    );
    let mut both = job("q", "x");
    both.delay_ms = 5;
    both.run_at_ms = 5;
    case!(
        "delay and run_at",
        b.enqueue(both),
        Code::InvalidArgument,
        "run_at_ms"
    );
    case!(
        "no queues",
        b.lease(pb::LeaseRequest::default()),
        Code::InvalidArgument,
        "queues"
    );
    case!(
        "too many jobs",
        b.lease(lease("q", 1001, 0, 0)),
        Code::InvalidArgument,
        "max_jobs"
    );
    case!(
        "visibility over 12h",
        b.lease(lease("q", 1, 13 * 3600 * 1000, 0)),
        Code::InvalidArgument,
        "visibility_timeout_ms"
    );
    case!(
        "wait over 12h",
        b.lease(lease("q", 1, 0, 13 * 3600 * 1000)),
        Code::InvalidArgument,
        "wait_ms"
    );
    case!(
        "malformed lease id",
        b.ack(pb::AckRequest {
            job_id: "0198".into(),
            lease_id: "nope".into(),
            result: Default::default()
        }),
        Code::InvalidArgument,
        "lease_id"
    );
    case!(
        "malformed job id",
        b.ack(pb::AckRequest {
            job_id: "bad id!".into(),
            lease_id: "0000000000000001".into(),
            result: Default::default()
        }),
        Code::InvalidArgument,
        "job_id"
    );
    case!(
        "unknown job",
        b.get_job(pb::GetJobRequest {
            job_id: "01900000-0000-7000-8000-000000000000".into()
        }),
        Code::NotFound,
        "not found"
    );
    case!(
        "ack of unknown job",
        b.ack(pb::AckRequest {
            job_id: "01900000-0000-7000-8000-000000000000".into(),
            lease_id: "0000000000000001".into(),
            result: Default::default()
        }),
        Code::NotFound,
        "not found"
    );
    case!(
        "progress over 100",
        b.extend_lease(pb::ExtendLeaseRequest {
            job_id: "x".into(),
            lease_id: "0000000000000001".into(),
            progress: 101,
            ..Default::default()
        }),
        Code::InvalidArgument,
        "progress"
    );
    case!(
        "empty batch",
        b.enqueue_batch(pb::EnqueueBatchRequest::default()),
        Code::InvalidArgument,
        "jobs"
    );
    case!(
        "bad state filter",
        c.admin.list_jobs(pb::ListJobsRequest {
            queue: "q".into(),
            state: 42,
            ..Default::default()
        }),
        Code::InvalidArgument,
        "state"
    );
    for (name, status, code, needle) in &cases {
        assert_eq!(status.code(), *code, "{name}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{name}: message {:?} should name {needle:?}",
            status.message()
        );
    }
    // And the node keeps serving.
    let mut c = node.clients().await;
    c.broker.enqueue(job("still-up", "x")).await.unwrap();
}

#[tokio::test]
async fn token_is_required_when_configured_and_health_stays_open() {
    let node = InProcNode::start_with(|c| c.token = Some("s3cret".into())).await;
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", node.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anon = taskraft_proto::v1::broker_client::BrokerClient::new(ch.clone());
    let err = anon.enqueue(job("q", "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let with = |token: &'static str| {
        taskraft_proto::v1::broker_client::BrokerClient::with_interceptor(
            ch.clone(),
            move |mut r: tonic::Request<()>| {
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                Ok(r)
            },
        )
    };
    let err = with("wrong").enqueue(job("q", "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    with("s3cret").enqueue(job("q", "x")).await.unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn cluster_status_and_http_probes_answer() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    c.broker.enqueue(job("s", "x")).await.unwrap();
    let st = c
        .admin
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.leader_id, 1);
    assert_eq!(st.nodes.len(), 1);
    assert_eq!(st.nodes[0].role, "leader");
    assert!(
        st.applied_index >= 2 && st.commit_index >= st.applied_index,
        "{st:?}"
    );
    let (code, _) = http_get(node.http_addr(), "/healthz").await.unwrap();
    assert_eq!(code, 200);
    let (code, body) = http_get(node.http_addr(), "/readyz").await.unwrap();
    assert_eq!(code, 200, "{body}");
}

/// Every background task is watched: one that ends stops the node, naming it (`taskraft
/// serve` exits with that message), instead of leaving a node that answers health checks
/// while every write waits on a proposer that is gone.
#[tokio::test]
async fn a_background_task_that_dies_stops_the_node_naming_it() {
    for task in ["proposer", "ticker", "webhook delivery"] {
        let mut node = InProcNode::start().await;
        let running = node.running.as_mut().expect("running");
        assert!(running.abort_task(task), "no task named {task}");
        let err = tokio::time::timeout(SOON, running.failed())
            .await
            .unwrap_or_else(|_| panic!("the end of the {task} task went unnoticed"));
        assert!(
            err.to_string()
                .contains(&format!("the {task} task stopped")),
            "{err}"
        );
    }
}

/// `EnqueueStream` answers every message by its seq: good jobs once stored (more than
/// the per-stream window of 1,024 in flight, so reading must resume as answers go out),
/// a bad job with its own INVALID_ARGUMENT naming the problem while the stream goes on,
/// and a repeated idempotency key as a duplicate of the first job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_stream_answers_each_job_by_seq_and_keeps_going_after_a_bad_one() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let mut msgs = Vec::new();
    for seq in 0..3_000u64 {
        let job = match seq % 100 {
            7 => pb::EnqueueRequest {
                queue: "no spaces allowed".into(),
                ..job("st", "x")
            },
            8 => {
                msgs.push(pb::EnqueueStreamRequest { seq, job: None });
                continue;
            }
            9 => pb::EnqueueRequest {
                idempotency_key: "same".into(),
                ..job("st", "keyed")
            },
            _ => job("st", &format!("p{seq}")),
        };
        msgs.push(pb::EnqueueStreamRequest {
            seq,
            job: Some(job),
        });
    }
    let mut answers = c
        .broker
        .enqueue_stream(tokio_stream::iter(msgs))
        .await
        .expect("stream accepted")
        .into_inner();
    let mut seen = std::collections::BTreeMap::new();
    while let Some(a) = tokio::time::timeout(SOON, answers.message())
        .await
        .expect("answers keep coming")
        .expect("the stream ends cleanly")
    {
        assert!(seen.insert(a.seq, a).is_none(), "a seq answered twice");
    }
    assert_eq!(seen.len(), 3_000, "every message is answered");
    let mut keyed = Vec::new();
    for (seq, a) in &seen {
        match seq % 100 {
            7 => {
                assert_eq!(a.code, Code::InvalidArgument as i32, "{a:?}");
                assert!(a.message.contains("queue"), "{a:?}");
            }
            8 => {
                assert_eq!(a.code, Code::InvalidArgument as i32, "{a:?}");
                assert!(a.message.contains("no job"), "{a:?}");
            }
            9 => keyed.push(a.clone()),
            _ => assert!(a.code == 0 && !a.job_id.is_empty() && !a.duplicate, "{a:?}"),
        }
    }
    assert_eq!(keyed.len(), 30);
    assert!(keyed
        .iter()
        .all(|a| a.code == 0 && a.job_id == keyed[0].job_id));
    assert_eq!(
        keyed.iter().filter(|a| !a.duplicate).count(),
        1,
        "{keyed:?}"
    );
    // 97 plain jobs in every hundred, plus the one keyed job.
    assert_eq!(stats(&mut c, "st").await.ready, 30 * 97 + 1);
    let first = seen[&0].job_id.clone();
    let got = c
        .broker
        .get_job(pb::GetJobRequest { job_id: first })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got.payload[..], b"p0");
}

/// A `Work` session: jobs are pushed up to the credits granted (including one enqueued
/// while the session waits), acks, nacks and extensions are answered by seq with the
/// unary calls' codes, and the jobs still held when the stream ends are ready again at
/// once, not after their 10-minute visibility timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_session_pushes_jobs_by_credit_and_gives_held_ones_back_when_it_ends() {
    use pb::work_request::Kind as Up;
    use pb::work_response::Kind as Down;
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let up = |kind: Up, seq: u64| pb::WorkRequest {
        kind: Some(kind),
        seq,
    };
    let open = pb::WorkOpen {
        queues: vec!["ws".into()],
        worker_id: "stream-worker".into(),
        visibility_timeout_ms: 600_000,
        ..Default::default()
    };
    let (tx, mut down) = open_work(&mut c, open, 3, None).await.unwrap();
    let Down::Opened(opened) = next_push(&mut down).await else {
        panic!("the first answer names the session")
    };
    assert!(!opened.session_id.is_empty());
    // Nothing is ready yet: the session waits, and a job enqueued now is pushed.
    c.broker.enqueue(job("ws", "j0")).await.unwrap();
    let Down::Job(first) = next_push(&mut down).await else {
        panic!("want a job")
    };
    assert_eq!(&first.payload[..], b"j0");
    for i in 1..=5 {
        c.broker.enqueue(job("ws", &format!("j{i}"))).await.unwrap();
    }
    let mut jobs = vec![first];
    while jobs.len() < 3 {
        let Down::Job(j) = next_push(&mut down).await else {
            panic!("want a job")
        };
        jobs.push(j);
    }
    // The credits are used up: the other three stay ready.
    assert_eq!(stats(&mut c, "ws").await.ready, 3);
    let ack = pb::AckRequest {
        job_id: jobs[0].job_id.clone(),
        lease_id: jobs[0].lease_id.clone(),
        result: "done".into(),
    };
    tx.send(up(Up::Ack(ack), 1)).await.unwrap();
    let stale = pb::AckRequest {
        job_id: jobs[1].job_id.clone(),
        lease_id: "00000000000000ff".into(),
        result: Default::default(),
    };
    tx.send(up(Up::Ack(stale), 2)).await.unwrap();
    let ext = pb::ExtendLeaseRequest {
        job_id: jobs[2].job_id.clone(),
        lease_id: jobs[2].lease_id.clone(),
        visibility_timeout_ms: 900_000,
        ..Default::default()
    };
    tx.send(up(Up::Extend(ext), 3)).await.unwrap();
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 3 {
        match next_push(&mut down).await {
            Down::Answer(a) => {
                answers.insert(a.seq, a);
            }
            other => panic!("no credit left, yet {other:?} was pushed"),
        }
    }
    assert_eq!(answers[&1].code, 0, "{:?}", answers[&1]);
    assert_eq!(answers[&2].code, Code::FailedPrecondition as i32);
    assert!(answers[&3].extend.as_ref().unwrap().lease_deadline_ms > jobs[2].lease_deadline_ms);
    assert_eq!(
        get_job(&mut c, &jobs[0].job_id).await.state,
        pb::JobState::Succeeded as i32
    );
    // The worker closes its side holding two jobs: they are ready again at once (the
    // response stream ends once the session has given them back).
    drop(tx);
    let end = tokio::time::timeout(SOON, async {
        while down.message().await.unwrap().is_some() {}
    });
    end.await.expect("the session ends after the half-close");
    assert_eq!(stats(&mut c, "ws").await.ready, 5, "released at once");
    let back = get_job(&mut c, &jobs[1].job_id).await;
    assert_eq!((back.state, back.attempt), (pb::JobState::Ready as i32, 0));
    // A session must be opened first, on queues with valid names.
    let r = c
        .broker
        .work(tokio_stream::iter(vec![up(Up::Credit(1), 0)]))
        .await;
    let Err(e) = r else {
        panic!("a stream opened without WorkOpen")
    };
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("open"), "{e:?}");
    let bad = pb::WorkOpen {
        queues: vec!["no spaces".into()],
        ..Default::default()
    };
    let r = c
        .broker
        .work(tokio_stream::iter(vec![up(Up::Open(bad), 0)]))
        .await;
    let Err(e) = r else {
        panic!("a session opened on a bad queue name")
    };
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// One `Work` session opened on `c` for `worker_id` on `queue`, granted `credits` and
/// handed that many jobs (enqueued first); returns the up sender, the down stream, the
/// session id and the jobs.
async fn work_session_holding(
    c: &mut Clients,
    queue: &str,
    worker_id: &str,
    credits: u32,
) -> (
    tokio::sync::mpsc::Sender<pb::WorkRequest>,
    tonic::Streaming<pb::WorkResponse>,
    String,
    Vec<pb::LeasedJob>,
) {
    use pb::work_response::Kind as Down;
    for i in 0..credits {
        c.broker
            .enqueue(job(queue, &format!("{queue}-{i}")))
            .await
            .unwrap();
    }
    let open = pb::WorkOpen {
        queues: vec![queue.into()],
        worker_id: worker_id.into(),
        visibility_timeout_ms: 600_000,
        ..Default::default()
    };
    let (tx, mut down) = open_work(c, open, credits, None).await.unwrap();
    let Down::Opened(opened) = next_push(&mut down).await else {
        panic!("the first answer names the session")
    };
    let mut jobs = Vec::new();
    while jobs.len() < credits as usize {
        match next_push(&mut down).await {
            Down::Job(j) => jobs.push(j),
            other => panic!("want a job, got {other:?}"),
        }
    }
    (tx, down, opened.session_id, jobs)
}

/// A `Work` stream that breaks (its connection cut, no half-close) keeps its leases
/// for a grace: a resume on the same node adopts the jobs the worker still holds
/// (acks on the new stream succeed, nothing is delivered twice) and gives back at once
/// the one it never got; the leases of a session nobody resumes run out once the grace
/// is over, long before their 10-minute visibility timeout, and the delivery counts as
/// an attempt (the worker may have run them, or crashed on them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_work_stream_is_parked_for_a_resume_then_its_leases_run_out() {
    use pb::work_request::Kind as Up;
    use pb::work_response::Kind as Down;
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let (proxy_a, proxy_b) = (
        CutProxy::start(node.addr()).await,
        CutProxy::start(node.addr()).await,
    );
    let mut via_a = connect(proxy_a.addr()).await;
    let mut via_b = connect(proxy_b.addr()).await;
    let (_up_a, mut down_a, id_a, jobs_a) =
        work_session_holding(&mut via_a, "rz-a", "rz-a-worker", 3).await;
    let (_up_b, _down_b, _, jobs_b) =
        work_session_holding(&mut via_b, "rz-b", "rz-b-worker", 2).await;

    // Cut A's connection, then resume A directly with two of its three jobs (the
    // third, say, was lost in flight).
    proxy_a.cut();
    let seen = tokio::time::timeout(SOON, down_a.message()).await;
    assert!(
        matches!(seen, Ok(Err(_))),
        "the client sees the break: {seen:?}"
    );
    let refused = work_open(&mut c, "rz-a-worker", "no-such-session", vec![]).await;
    let Err(e) = refused else {
        panic!("resumed a session that never was")
    };
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("not parked on this node"), "{e:?}");
    let holding = vec![jobs_a[0].job_id.clone(), jobs_a[1].job_id.clone()];
    let wrong_worker = work_open(&mut c, "someone-else", &id_a, holding.clone()).await;
    assert_eq!(wrong_worker.err().map(|e| e.code()), Some(Code::NotFound));
    let (up, mut down, opened) = work_open(&mut c, "rz-a-worker", &id_a, holding)
        .await
        .expect("the resume is accepted");
    assert_eq!(opened.adopted, 2, "{opened:?}");
    assert_ne!(opened.session_id, id_a);
    // The job the worker never got is ready again at once, its attempt undone.
    eventually("the lost push to be given back", SOON, || {
        let (mut c, id) = (c.clone(), jobs_a[2].job_id.clone());
        async move {
            let j = get_job(&mut c, &id).await;
            (j.state == pb::JobState::Ready as i32 && j.attempt == 0).then_some(())
        }
    })
    .await;
    // Resumed once, the session is no longer parked.
    let again = work_open(&mut c, "rz-a-worker", &id_a, vec![]).await;
    assert_eq!(again.err().map(|e| e.code()), Some(Code::NotFound));

    // B breaks after A was resumed and nobody resumes it: its leases run out after the
    // grace, as a dead poll worker's would at its visibility timeout (the attempt
    // counts, the expiry is recorded).
    proxy_b.cut();
    for j in &jobs_b {
        let back = eventually("B's leases to run out after the grace", SOON, || {
            let (mut c, id) = (c.clone(), j.job_id.clone());
            async move {
                let j = get_job(&mut c, &id).await;
                (j.state == pb::JobState::Ready as i32).then_some(j)
            }
        })
        .await;
        assert_eq!((back.attempt, back.expirations), (1, 1), "{back:?}");
        assert!(back.last_error.contains("lease expired"), "{back:?}");
    }
    // A's grace is over too, yet its adopted jobs are still held: acks on the new
    // stream succeed, each job done on its first and only delivery.
    for (seq, j) in jobs_a[..2].iter().enumerate() {
        let ack = pb::AckRequest {
            job_id: j.job_id.clone(),
            lease_id: j.lease_id.clone(),
            result: Default::default(),
        };
        let req = pb::WorkRequest {
            kind: Some(Up::Ack(ack)),
            seq: seq as u64 + 1,
        };
        up.send(req).await.unwrap();
    }
    for _ in 0..2 {
        let Down::Answer(a) = next_push(&mut down).await else {
            panic!("want an answer")
        };
        assert_eq!(a.code, 0, "{a:?}");
    }
    for j in &jobs_a[..2] {
        let done = get_job(&mut c, &j.job_id).await;
        assert_eq!(
            (done.state, done.attempt, done.expirations),
            (pb::JobState::Succeeded as i32, 1, 0),
            "{done:?}"
        );
    }
}

/// Opens a `Work` session resuming `resume` (or a fresh one when empty) on queue
/// `rz-a`, and reads its `WorkOpened`.
async fn work_open(
    c: &mut Clients,
    worker_id: &str,
    resume: &str,
    holding: Vec<String>,
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::WorkRequest>,
        tonic::Streaming<pb::WorkResponse>,
        pb::WorkOpened,
    ),
    tonic::Status,
> {
    let open = pb::WorkOpen {
        queues: vec!["rz-a".into()],
        worker_id: worker_id.into(),
        visibility_timeout_ms: 600_000,
        resume: resume.into(),
        holding,
    };
    let (tx, mut down) = open_work(c, open, 0, None).await?;
    let Some(pb::work_response::Kind::Opened(opened)) = down.message().await?.and_then(|m| m.kind)
    else {
        panic!("the first answer names the session")
    };
    Ok((tx, down, opened))
}
