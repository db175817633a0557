//! The Rust worker SDK against a real in-process node: exactly-once processing across
//! workers, lease extension, panics, permanent errors, cancellation, progress,
//! graceful shutdown, max_jobs and client-side batching.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskraft::{
    BatcherOptions, Client, EnqueueOptions, Error, HandlerError, Job, JobState, NewJob, Protocol,
    Report, Worker,
};
use taskraft_proto::v1 as pb;
use taskraft_tests::*;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Runs each named `async fn(Protocol)` once per worker protocol, as the tests
/// `<name>::stream` and `<name>::poll`: what a job's life looks like must not depend on
/// how the worker gets its jobs.
macro_rules! both_protocols {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stream() {
                super::$name(taskraft::Protocol::Stream).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn poll() {
                super::$name(taskraft::Protocol::Poll).await
            }
        }
    )*};
}

both_protocols!(
    thousand_jobs_over_three_workers_each_run_exactly_once,
    handler_outliving_the_visibility_timeout_keeps_its_lease,
    panicking_handler_is_nacked_and_the_worker_carries_on,
    permanent_error_dead_letters_at_once_and_others_retry,
    cancelling_a_running_job_aborts_its_handler,
    progress_reported_by_a_handler_is_stored_on_the_job,
    shutdown_finishes_jobs_in_flight,
    shutdown_timeout_gives_unfinished_jobs_back_for_immediate_retry,
    max_jobs_stops_the_worker_after_that_many,
);

async fn sdk_client(node: &InProcNode) -> Client {
    Client::connect([node.addr().to_string()])
        .await
        .expect("client")
}

/// Runs `worker` until the returned sender fires (or is dropped).
fn spawn_worker(worker: Worker) -> (oneshot::Sender<()>, JoinHandle<Result<Report, Error>>) {
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run_until(async move {
        let _ = rx.await;
    }));
    (tx, handle)
}

async fn stop(tx: oneshot::Sender<()>, handle: JoinHandle<Result<Report, Error>>) -> Report {
    let _ = tx.send(());
    tokio::time::timeout(SOON, handle)
        .await
        .expect("worker stops in time")
        .expect("worker task")
        .expect("worker run")
}

async fn thousand_jobs_over_three_workers_each_run_exactly_once(protocol: Protocol) {
    let node = InProcNode::start().await;
    let client = sdk_client(&node).await;
    let jobs: Vec<NewJob> = (0..1000)
        .map(|i| {
            NewJob::new("bulk", format!("job-{i}")).options(EnqueueOptions::new().job_type("count"))
        })
        .collect();
    let ids: HashSet<String> = client
        .enqueue_batch(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job_id)
        .collect();
    assert_eq!(ids.len(), 1000);

    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..3 {
        let runs = runs.clone();
        let worker = Worker::builder(client.clone())
            .protocol(protocol)
            .queue("bulk")
            .concurrency(8)
            .prefetch(4)
            .poll_wait(Duration::from_secs(1))
            .worker_id(format!("bulk-{w}"))
            .handler("count", move |job: Job| {
                let runs = runs.clone();
                async move {
                    *runs
                        .lock()
                        .unwrap()
                        .entry(job.id().to_string())
                        .or_default() += 1;
                    tokio::task::yield_now().await;
                    Ok::<_, HandlerError>(())
                }
            })
            .build()
            .unwrap();
        workers.push(spawn_worker(worker));
    }
    let mut c = node.clients().await;
    eventually_ok("all 1000 jobs to succeed", SOON, || {
        let mut c = c.clone();
        async move {
            let s = stats(&mut c, "bulk").await;
            if s.succeeded == 1000 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    let mut total = Report::default();
    for (tx, h) in workers {
        let r = stop(tx, h).await;
        total.succeeded += r.succeeded;
        total.failed += r.failed;
    }
    assert_eq!((total.succeeded, total.failed), (1000, 0));
    {
        let runs = runs.lock().unwrap();
        assert_eq!(runs.keys().cloned().collect::<HashSet<_>>(), ids);
        let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "jobs run more than once: {twice:?}");
    }
    let s = stats(&mut c, "bulk").await;
    assert_eq!((s.ready, s.leased, s.dead), (0, 0, 0));
}

/// The worker extends the lease of a handler that runs past its visibility timeout. The
/// handler runs until the test has seen (through GetJob) an extension granted after the
/// lease's first deadline had passed, however long that takes on a loaded machine; the
/// job then completes on its first lease.
async fn handler_outliving_the_visibility_timeout_keeps_its_lease(protocol: Protocol) {
    let node = InProcNode::start().await;
    let client = sdk_client(&node).await;
    let id = client.enqueue("slow", "x").await.unwrap();
    // The worker extends every third of the visibility timeout: a heartbeat may come
    // 2.7 s late before the lease runs out.
    let visibility = Duration::from_secs(4);
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let released = release.clone();
    let worker = Worker::builder(client.clone())
        .protocol(protocol)
        .queue("slow")
        .visibility_timeout(visibility)
        .default_handler(move |_job: Job| {
            let (started_tx, released) = (started_tx.clone(), released.clone());
            async move {
                let _ = started_tx.send(());
                released.notified().await;
                Ok::<_, HandlerError>("slow but done")
            }
        })
        .build()
        .unwrap();
    let (tx, h) = spawn_worker(worker);
    tokio::time::timeout(SOON, started.recv())
        .await
        .expect("the handler starts in time")
        .expect("the handler starts");
    let mut c = node.clients().await;
    // The first deadline, or a later one if an extension came already.
    let first = get_job(&mut c, &id).await;
    assert_eq!(first.attempt, 1, "{first:?}");
    // An extension sets the deadline one visibility timeout past the broker's time: one
    // this far out was granted when the first deadline had passed, and the broker grants
    // none on a lease that ran out.
    let past_first = first.lease_deadline_ms + visibility.as_millis() as u64;
    eventually_ok(
        "an extension granted after the first deadline",
        SOON,
        || {
            let mut c = c.clone();
            let id = id.clone();
            async move {
                let j = get_job(&mut c, &id).await;
                assert_eq!(
                    (j.state, j.attempt, j.expirations),
                    (pb::JobState::Leased as i32, 1, 0),
                    "the first lease ran out: {j:?}"
                );
                if j.lease_deadline_ms >= past_first {
                    Ok(())
                } else {
                    Err(format!("deadline {} < {past_first}", j.lease_deadline_ms))
                }
            }
        },
    )
    .await;
    release.notify_one();
    let job = client.wait_for_job(&id, SOON).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!((job.attempt, job.expirations), (1, 0), "{job:?}");
    assert_eq!(&job.result[..], b"slow but done");
    assert_eq!(stop(tx, h).await.succeeded, 1);
}

async fn panicking_handler_is_nacked_and_the_worker_carries_on(protocol: Protocol) {
    let node = InProcNode::start().await;
    let client = sdk_client(&node).await;
    let worker = Worker::builder(client.clone())
        .protocol(protocol)
        .queue("panics")
        .concurrency(1)
        .default_handler(|job: Job| async move {
            if job.payload().as_ref() == b"boom" {
                panic!("kaboom on purpose");
            }
            Ok::<_, HandlerError>(())
        })
        .build()
        .unwrap();
    let (tx, h) = spawn_worker(worker);
    let boom = client
        .enqueue_with("panics", "boom", &EnqueueOptions::new().max_attempts(1))
        .await
        .unwrap()
        .job_id;
    let dead = client.wait_for_job(&boom, SOON).await.unwrap();
    assert_eq!(dead.state, JobState::Dead);
    assert!(
        dead.last_error.contains("panicked") && dead.last_error.contains("kaboom on purpose"),
        "{:?}",
        dead.last_error
    );
    let fine = client.enqueue("panics", "fine").await.unwrap();
    let done = client.wait_for_job(&fine, SOON).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    let r = stop(tx, h).await;
    assert_eq!((r.succeeded, r.failed), (1, 1));
}

async fn permanent_error_dead_letters_at_once_and_others_retry(protocol: Protocol) {
    let node = InProcNode::start().await;
    let client = sdk_client(&node).await;
    let worker = Worker::builder(client.clone())
        .protocol(protocol)
        .queue("errs")
        .handler("perm", |_job: Job| async move {
            Err::<(), _>(HandlerError::permanent("bad input: no such user"))
        })
        .handler("flaky", |job: Job| async move {
            if job.attempt() < 2 {
                return Err(HandlerError::new("try again").retry_after(Duration::from_millis(10)));
            }
            Ok(())
        })
        .build()
        .unwrap();
    let (tx, h) = spawn_worker(worker);
    let opts = |t: &str| EnqueueOptions::new().job_type(t).max_attempts(5);
    let perm = client
        .enqueue_with("errs", "x", &opts("perm"))
        .await
        .unwrap()
        .job_id;
    let flaky = client
        .enqueue_with("errs", "x", &opts("flaky"))
        .await
        .unwrap()
        .job_id;
    let dead = client.wait_for_job(&perm, SOON).await.unwrap();
    assert_eq!((dead.state, dead.attempt), (JobState::Dead, 1), "{dead:?}");
    assert_eq!(dead.last_error, "bad input: no such user");
    let ok = client.wait_for_job(&flaky, SOON).await.unwrap();
    assert_eq!((ok.state, ok.attempt), (JobState::Succeeded, 2), "{ok:?}");
    stop(tx, h).await;
}

async fn cancelling_a_running_job_aborts_its_handler(protocol: Protocol) {
    let node = InProcNode::start().await;
    let client = sdk_client(&node).await;
    let (started_tx, mut started) = mpsc::unbounded_channel::<String>();
    let finished = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let told = Arc::new(AtomicBool::new(false));
    // Records that the handler was dropped, and whether its job had been told of the
    // cancel by then (a cancel, not a lease merely lost: the broker's reason came
    // through, on the stream as on a unary call).
    struct OnDrop(Arc<AtomicBool>, Arc<AtomicBool>, Job);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.1.store(self.2.is_cancelled(), Ordering::SeqCst);
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let (f, d, t) = (finished.clone(), dropped.clone(), told.clone());
    let worker = Worker::builder(client.clone())
        .protocol(protocol)
        .queue("cancel")
        // The worker learns of the cancel at its next extension, every second; a 3 s
        // lease lets a heartbeat come 2 s late without the job being redelivered.
        .visibility_timeout(Duration::from_secs(3))
        .default_handler(move |job: Job| {
            let (started_tx, f, d, t) = (started_tx.clone(), f.clone(), d.clone(), t.clone());
            async move {
                started_tx.send(job.id().to_string()).unwrap();
                let _guard = OnDrop(d, t, job);
                tokio::time::sleep(Duration::from_secs(60)).await;
                f.store(true, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .unwrap();
    let (tx, h) = spawn_worker(worker);
    let id = client.enqueue("cancel", "x").await.unwrap();
    let got = tokio::time::timeout(SOON, started.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, id);
    let cancelled = client.cancel_job(&id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    eventually("the handler to be aborted", SOON, || {
        let d = dropped.clone();
        async move { d.load(Ordering::SeqCst).then_some(()) }
    })
    .await;
    assert!(!finished.load(Ordering::SeqCst));
    assert!(
        told.load(Ordering::SeqCst),
        "the job was not told it was cancelled"
    );
    assert_eq!(
        client.get_job(&id).await.unwrap().state,
        JobState::Cancelled
    );
    let r = stop(tx, h).await;
    assert_eq!((r.succeeded, r.abandoned), (0, 1));
}

async fn progress_reported_by_a_handler_is_stored_on_the_job(protocol: Protocol) {
    let node = InProcNode::start().await;
    let client = sdk_client(&node).await;
    let (release_tx, release_rx) = mpsc::unbounded_channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(release_rx));
    let worker = Worker::builder(client.clone())
        .protocol(protocol)
        .queue("progress")
        .default_handler(move |job: Job| {
            let release_rx = release_rx.clone();
            async move {
                job.progress(42, "resizing 42 of 100");
                release_rx.lock().await.recv().await;
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .unwrap();
    let (tx, h) = spawn_worker(worker);
    let id = client.enqueue("progress", "x").await.unwrap();
    eventually("progress to show up", SOON, || {
        let (client, id) = (client.clone(), id.clone());
        async move {
            let j = client.get_job(&id).await.unwrap();
            (j.progress == 42 && j.progress_message == "resizing 42 of 100").then_some(())
        }
    })
    .await;
    release_tx.send(()).unwrap();
    let job = client.wait_for_job(&id, SOON).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    stop(tx, h).await;
}

async fn shutdown_finishes_jobs_in_flight(protocol: Protocol) {
    let node = InProcNode::start().await;
    let client = sdk_client(&node).await;
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let worker = Worker::builder(client.clone())
        .protocol(protocol)
        .queue("drain")
        .concurrency(2)
        .default_handler(move |_job: Job| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok::<_, HandlerError>("finished")
            }
        })
        .build()
        .unwrap();
    let a = client.enqueue("drain", "a").await.unwrap();
    let b = client.enqueue("drain", "b").await.unwrap();
    let (tx, h) = spawn_worker(worker);
    for _ in 0..2 {
        tokio::time::timeout(SOON, started.recv())
            .await
            .unwrap()
            .unwrap();
    }
    let r = stop(tx, h).await;
    assert_eq!(r.succeeded, 2, "{r:?}");
    for id in [a, b] {
        let j = client.get_job(&id).await.unwrap();
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    }
    // Nothing is leased after the worker stopped: its Lease call in flight was dropped
    // (the broker ends it once the cancellation arrives), or its session stopped
    // leasing and was closed, and no other follows, so nothing is left to take a job
    // enqueued now.
    eventually("the stopped worker's lease look to end", SOON, || async {
        (node.lease_calls_on("drain") == 0).then_some(())
    })
    .await;
    let late = client.enqueue("drain", "late").await.unwrap();
    assert_eq!(client.get_job(&late).await.unwrap().state, JobState::Ready);
    assert_eq!(
        node.lease_calls_on("drain"),
        0,
        "a Lease call after the stop"
    );
}

async fn shutdown_timeout_gives_unfinished_jobs_back_for_immediate_retry(protocol: Protocol) {
    let node = InProcNode::start().await;
    let client = sdk_client(&node).await;
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let worker = Worker::builder(client.clone())
        .protocol(protocol)
        .queue("stuck")
        .shutdown_timeout(Duration::from_millis(300))
        .default_handler(move |_job: Job| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .unwrap();
    let id = client.enqueue("stuck", "x").await.unwrap();
    let (tx, h) = spawn_worker(worker);
    tokio::time::timeout(SOON, started.recv())
        .await
        .unwrap()
        .unwrap();
    let r = stop(tx, h).await;
    assert_eq!(r.abandoned, 1, "{r:?}");
    // Retried after 1 ms, not after the exponential backoff (1 s base).
    let mut c = node.clients().await;
    let again = c
        .broker
        .lease(lease("stuck", 1, 30_000, 10_000))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].job_id.as_str(), again[0].attempt),
        (id.as_str(), 2)
    );
    assert!(get_job(&mut c, &id).await.last_error.contains("shut down"));
}

async fn max_jobs_stops_the_worker_after_that_many(protocol: Protocol) {
    let node = InProcNode::start().await;
    let client = sdk_client(&node).await;
    for i in 0..5 {
        client.enqueue("limited", format!("{i}")).await.unwrap();
    }
    let runs = Arc::new(AtomicU32::new(0));
    let r2 = runs.clone();
    let report = tokio::time::timeout(
        SOON,
        Worker::builder(client.clone())
            .protocol(protocol)
            .queue("limited")
            .concurrency(2)
            .max_jobs(3)
            .default_handler(move |_job: Job| {
                let runs = r2.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, HandlerError>(())
                }
            })
            .build()
            .unwrap()
            .run_until(std::future::pending()),
    )
    .await
    .expect("worker exits after max_jobs")
    .unwrap();
    assert_eq!(report.succeeded, 3);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let s = client.queue_stats("limited").await.unwrap();
    assert_eq!((s.succeeded, s.ready), (3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batcher_coalesces_concurrent_enqueues_and_isolates_a_bad_job() {
    let node = InProcNode::start().await;
    let client = sdk_client(&node).await;
    let batcher = client.batcher(
        BatcherOptions::new()
            .linger(Duration::from_millis(50))
            .max_batch(1000),
    );
    let calls = (0..500).map(|i| {
        let b = batcher.clone();
        async move { b.enqueue("coalesced", format!("{i}")).await }
    });
    let ids = futures::future::try_join_all(calls).await.unwrap();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 500);
    let s = batcher.stats();
    assert_eq!(s.jobs, 500);
    assert!(
        s.batches <= 25,
        "500 concurrent enqueues took {} calls",
        s.batches
    );
    assert_eq!(client.queue_stats("coalesced").await.unwrap().ready, 500);

    // One invalid job fails only its own caller.
    let good = batcher.enqueue("coalesced", "good");
    let bad = batcher.enqueue("bad queue name", "bad");
    let (good, bad) = tokio::join!(good, bad);
    assert!(good.is_ok(), "{good:?}");
    assert!(matches!(bad, Err(Error::InvalidArgument(_))), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rotates_past_a_dead_address_and_classifies_errors() {
    let node = InProcNode::start_with(|c| c.token = Some("s3cret".into())).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let client = Client::builder()
        .addrs([dead.clone(), node.addr().to_string()])
        .token("s3cret")
        .connect()
        .await
        .unwrap();
    let id = client.enqueue("rot", "x").await.unwrap();
    assert_eq!(client.get_job(&id).await.unwrap().state, JobState::Ready);

    let wrong = Client::builder()
        .addr(node.addr().to_string())
        .token("nope")
        .connect()
        .await
        .unwrap();
    assert!(matches!(
        wrong.enqueue("rot", "x").await,
        Err(Error::Unauthenticated(_))
    ));
    let missing = client.get_job("01900000-0000-7000-8000-000000000000").await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    let nobody = Client::builder()
        .addr(dead)
        .retry_for(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let err = nobody.enqueue("rot", "x").await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. }) && err.is_retryable(),
        "{err:?}"
    );
}

/// A stream-protocol worker whose connection is cut (no half-close, as a lost network
/// would) resumes its session on the same node: the jobs in hand stay its own past the
/// broker's grace (a session broken at the same time and not resumed has had its lease
/// run out by then), each job runs once, and the worker opened exactly two sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_worker_resumes_its_session_after_a_cut_and_runs_each_job_once() {
    use pb::work_request::Kind as Up;
    use pb::work_response::Kind as Down;
    let node = InProcNode::start().await;
    let (proxy, canary_proxy) = (
        CutProxy::start(node.addr()).await,
        CutProxy::start(node.addr()).await,
    );
    let client = Client::connect([proxy.addr().to_string()]).await.unwrap();
    let direct = sdk_client(&node).await;
    let mut ids = HashSet::new();
    for i in 0..6 {
        ids.insert(direct.enqueue("cut", format!("{i}")).await.unwrap());
    }
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel::<String>();
    let (r, g) = (runs.clone(), gate.clone());
    let worker = Worker::builder(client)
        .queue("cut")
        .concurrency(4)
        // No heartbeat during the test: only the session keeps the jobs.
        .visibility_timeout(Duration::from_secs(600))
        .default_handler(move |job: Job| {
            let (runs, gate, started_tx) = (r.clone(), g.clone(), started_tx.clone());
            async move {
                *runs
                    .lock()
                    .unwrap()
                    .entry(job.id().to_string())
                    .or_default() += 1;
                let _ = started_tx.send(job.id().to_string());
                gate.acquire().await.expect("gate open").forget();
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .unwrap();
    let (tx, h) = spawn_worker(worker);
    let mut in_hand = Vec::new();
    while in_hand.len() < 4 {
        let id = tokio::time::timeout(SOON, started.recv())
            .await
            .expect("four handlers start in time")
            .expect("started");
        in_hand.push(id);
    }

    // The canary: a bare session holding one job, through its own proxy.
    let mut canary = connect(canary_proxy.addr()).await;
    let canary_job = direct.enqueue("cut-canary", "c").await.unwrap();
    let (up, rx) = mpsc::channel(4);
    let open = pb::WorkOpen {
        queues: vec!["cut-canary".into()],
        worker_id: "canary".into(),
        visibility_timeout_ms: 600_000,
        ..Default::default()
    };
    for kind in [Up::Open(open), Up::Credit(1)] {
        up.send(pb::WorkRequest {
            kind: Some(kind),
            seq: 0,
        })
        .await
        .unwrap();
    }
    let mut down = canary
        .broker
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    loop {
        let msg = tokio::time::timeout(SOON, down.message())
            .await
            .expect("a push in time")
            .unwrap()
            .expect("open");
        if let Some(Down::Job(j)) = msg.kind {
            assert_eq!(j.job_id, canary_job);
            break;
        }
    }

    // Cut the worker's connection; once it has reconnected, cut the canary's.
    let before = proxy.accepted();
    proxy.cut();
    eventually("the worker to reconnect", SOON, || {
        std::future::ready((proxy.accepted() > before).then_some(()))
    })
    .await;
    canary_proxy.cut();
    let mut c = node.clients().await;
    eventually(
        "the canary's lease to run out after the grace",
        SOON,
        || {
            let (mut c, id) = (c.clone(), canary_job.clone());
            async move {
                let j = get_job(&mut c, &id).await;
                (j.state == pb::JobState::Ready as i32 && j.expirations == 1).then_some(())
            }
        },
    )
    .await;
    for id in &in_hand {
        let j = get_job(&mut c, id).await;
        assert_eq!(
            (j.state, j.attempt),
            (pb::JobState::Leased as i32, 1),
            "a job in hand was given back: {j:?}"
        );
    }

    gate.add_permits(100);
    eventually_ok("all six jobs to succeed", SOON, || {
        let mut c = c.clone();
        async move {
            let s = stats(&mut c, "cut").await;
            if s.succeeded == 6 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    let r = stop(tx, h).await;
    assert_eq!((r.succeeded, r.lease_calls), (6, 2), "{r:?}");
    let runs = runs.lock().unwrap();
    assert_eq!(runs.keys().cloned().collect::<HashSet<_>>(), ids);
    assert!(runs.values().all(|n| *n == 1), "a job ran twice: {runs:?}");
}
