//! Observability and operations on a real in-process node: Prometheus metrics that
//! follow jobs, gRPC reflection, W3C trace context carried from producer to worker,
//! the token on the dashboard's JSON API, and the dashboard itself in headless
//! Chromium (rendering queues, retrying a dead job).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use taskraft_proto::v1 as pb;
use taskraft_tests::*;
use tonic::metadata::MetadataValue;

/// One sample of `name` whose labels include every `labels` pair, from Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A small HTTP/1.1 request over a raw TCP stream: (status code, body).
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    taskraft_tests::http_request(addr, method, path, token).await
}

async fn metrics_text(node: &InProcNode) -> String {
    let (code, body) = http(node.http_addr(), "GET", "/metrics", None).await;
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test]
async fn metrics_follow_jobs_through_enqueue_lease_ack_and_nack() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    for i in 0..10 {
        c.broker
            .enqueue(job("obs", &format!("j{i}")))
            .await
            .unwrap();
    }
    let leased = c
        .broker
        .lease(lease("obs", 4, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(leased.len(), 4);
    for j in &leased[..2] {
        c.broker
            .ack(pb::AckRequest {
                job_id: j.job_id.clone(),
                lease_id: j.lease_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    let m = metrics_text(&node).await;
    let jobs = |state: &str| {
        sample(
            &m,
            "taskraft_queue_jobs",
            &[("queue", "obs"), ("state", state)],
        )
    };
    assert_eq!(jobs("ready"), Some(6.0), "{m}");
    assert_eq!(jobs("leased"), Some(2.0), "{m}");
    assert_eq!(jobs("succeeded"), Some(2.0), "{m}");
    assert_eq!(jobs("dead"), Some(0.0), "{m}");
    let obs = [("queue", "obs")];
    assert_eq!(
        sample(&m, "taskraft_jobs_enqueued_total", &obs),
        Some(10.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "taskraft_jobs_leased_total", &obs),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "taskraft_jobs_acked_total", &obs),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "taskraft_job_wait_seconds_count", &obs),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "taskraft_job_processing_seconds_count", &obs),
        Some(2.0),
        "{m}"
    );
    let enqueue_ok = [("method", "/taskraft.v1.Broker/Enqueue"), ("code", "OK")];
    assert_eq!(
        sample(&m, "taskraft_rpc_duration_seconds_count", &enqueue_ok),
        Some(10.0),
        "{m}"
    );
    assert_eq!(sample(&m, "taskraft_raft_leader_id", &[]), Some(1.0), "{m}");
    assert!(
        sample(&m, "taskraft_raft_term", &[]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "taskraft_raft_applied_index", &[]).unwrap_or(0.0) >= 12.0,
        "{m}"
    );
    assert!(
        sample(&m, "taskraft_raft_log_entries", &[]).unwrap_or(0.0) >= 12.0,
        "{m}"
    );
    assert!(
        sample(&m, "taskraft_storage_fsync_seconds_count", &[]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "taskraft_disk_free_bytes", &[]).unwrap_or(0.0) > 0.0,
        "{m}"
    );
    // A leader whose clock agrees with replicated time.
    let skew = sample(&m, "taskraft_clock_skew_seconds", &[]).expect("clock skew gauge");
    assert!(skew.abs() < 1.0, "skew {skew}: {m}");

    // A nack that dead-letters, and a call the handler rejects, move their series too.
    let last = &leased[3];
    let nack = c
        .broker
        .nack(pb::NackRequest {
            job_id: last.job_id.clone(),
            lease_id: last.lease_id.clone(),
            error: "boom".into(),
            dead_letter: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nack.state, pb::JobState::Dead as i32);
    let bad = c.broker.enqueue(job("", "x")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let m = metrics_text(&node).await;
    assert_eq!(
        sample(&m, "taskraft_jobs_nacked_total", &obs),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "taskraft_jobs_dead_lettered_total", &obs),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "taskraft_queue_jobs",
            &[("queue", "obs"), ("state", "dead")]
        ),
        Some(1.0),
        "{m}"
    );
    let rejected = [
        ("method", "/taskraft.v1.Broker/Enqueue"),
        ("code", "INVALID_ARGUMENT"),
    ];
    assert_eq!(
        sample(&m, "taskraft_rpc_duration_seconds_count", &rejected),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn expired_leases_are_counted() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    c.broker.enqueue(job("exp", "x")).await.unwrap();
    let got = c
        .broker
        .lease(lease("exp", 1, 200, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(got.len(), 1);
    // The lease runs out after 200 ms; the leader's tick redelivers it, and the metrics
    // sampler (every 2 s) notices.
    eventually_ok("the expiry to be counted", SOON, || async {
        let m = metrics_text(&node).await;
        match sample(&m, "taskraft_jobs_expired_total", &[("queue", "exp")]) {
            Some(1.0) => Ok(()),
            _ => Err(format!("the metrics say\n{m}")),
        }
    })
    .await;
}

/// Long-polling workers waiting on a quiet queue cost nothing while another queue is
/// busy: a commit wakes only the waiters of queues that gained ready jobs (one per
/// job), so 50 idle Leases look again only every few seconds each, not on every one of
/// 300 enqueues elsewhere (which used to mean about 15,000 looks); and a job for
/// their queue still reaches one of them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_long_polls_are_not_woken_by_other_queues() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let polls = |text: &str| sample(text, "taskraft_lease_polls_total", &[]).unwrap_or(0.0);
    let waiters = 50;
    let mut calls = Vec::new();
    for i in 0..waiters {
        let mut c = c.clone();
        calls.push(tokio::spawn(async move {
            let mut req = lease("idle", 1, 30_000, 20_000);
            req.worker_id = format!("idle-{i}");
            c.broker.lease(req).await.map(|r| r.into_inner().jobs)
        }));
    }
    eventually("every idle Lease is waiting", SOON, || async {
        (polls(&metrics_text(&node).await) >= f64::from(waiters)).then_some(())
    })
    .await;
    let before = polls(&metrics_text(&node).await);
    let started = std::time::Instant::now();
    for i in 0..300 {
        c.broker
            .enqueue(job("busy", &format!("b{i}")))
            .await
            .unwrap();
    }
    let looks = polls(&metrics_text(&node).await) - before;
    // Each waiter's re-check every 5 s, with two looks of slack.
    let allowed = f64::from(waiters) * (started.elapsed().as_secs_f64() / 5.0 + 2.0);
    assert!(
        looks <= allowed,
        "{looks} looks by {waiters} idle Leases during 300 enqueues on another queue (at most {allowed})"
    );

    // A job for their queue is handed to one of them, within the long poll.
    let id = c
        .broker
        .enqueue(job("idle", "x"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let (first, _, rest) = tokio::time::timeout(SOON, futures::future::select_all(calls))
        .await
        .expect("no waiting Lease got the job");
    let jobs = first.unwrap().expect("lease");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job_id, id);
    for t in rest {
        t.abort();
    }
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let node = InProcNode::start_with(|c| c.metrics = false).await;
    let mut c = node.clients().await;
    c.broker.enqueue(job("off", "x")).await.unwrap();
    let m = metrics_text(&node).await;
    assert!(!m.contains("taskraft_"), "{m}");
    assert!(m.contains("disabled"), "{m}");
}

#[tokio::test]
async fn reflection_lists_the_public_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let node = InProcNode::start_with(|c| c.token = Some("s3cret".into())).await;
    // Reflection stays open without the token, like `grpcurl list`.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection call")
        .into_inner();
    let resp = stream.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("not a list_services answer: {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "taskraft.v1.Broker",
        "taskraft.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn reflection_answers_the_older_v1alpha_protocol_too() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let node = InProcNode::start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "taskraft.v1.Broker".into(),
        )),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("v1alpha reflection call")
        .into_inner();
    let resp = stream.message().await.unwrap().expect("one response");
    let Some(MessageResponse::FileDescriptorResponse(files)) = resp.message_response else {
        panic!("not a file descriptor answer: {resp:?}");
    };
    assert!(
        !files.file_descriptor_proto.is_empty(),
        "no descriptor for taskraft.v1.Broker"
    );
}

#[tokio::test]
async fn producer_trace_context_reaches_the_worker_in_job_headers() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");

    let mut req = tonic::Request::new(job("traced", "a"));
    req.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str()).unwrap(),
    );
    req.metadata_mut()
        .insert("tracestate", MetadataValue::from_static("vendor=abc"));
    let first = c.broker.enqueue(req).await.unwrap().into_inner().job_id;

    // A caller that set the header itself keeps its own value.
    let mut own = job("traced", "b");
    own.headers
        .insert("traceparent".into(), "00-own-own-01".into());
    let mut req = tonic::Request::new(own);
    req.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str()).unwrap(),
    );
    let second = c.broker.enqueue(req).await.unwrap().into_inner().job_id;

    // Batches carry it too.
    let mut req = tonic::Request::new(pb::EnqueueBatchRequest {
        jobs: vec![job("traced", "c")],
    });
    req.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str()).unwrap(),
    );
    let third = c
        .broker
        .enqueue_batch(req)
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .job_id
        .clone();

    let leased = c
        .broker
        .lease(lease("traced", 10, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let by_id: HashMap<&str, &pb::LeasedJob> =
        leased.iter().map(|j| (j.job_id.as_str(), j)).collect();
    let h = |id: &str, k: &str| by_id[id].headers.get(k).cloned();
    assert_eq!(
        h(&first, "traceparent").as_deref(),
        Some(traceparent.as_str())
    );
    assert!(h(&first, "traceparent").unwrap().contains(trace_id));
    assert_eq!(h(&first, "tracestate").as_deref(), Some("vendor=abc"));
    assert_eq!(h(&second, "traceparent").as_deref(), Some("00-own-own-01"));
    assert_eq!(
        h(&third, "traceparent").as_deref(),
        Some(traceparent.as_str())
    );
}

#[tokio::test]
async fn dashboard_api_requires_the_token_when_set() {
    let node = InProcNode::start_with(|c| c.token = Some("s3cret".into())).await;
    let addr = node.http_addr();
    for path in ["/api/cluster", "/api/queues", "/api/workers"] {
        let (code, body) = http(addr, "GET", path, None).await;
        assert_eq!(code, 401, "{path}: {body}");
        let (code, _) = http(addr, "GET", path, Some("wrong")).await;
        assert_eq!(code, 401, "{path} with a wrong token");
        let (code, body) = http(addr, "GET", path, Some("s3cret")).await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    let (code, _) = http(addr, "POST", "/api/queues/q/pause", None).await;
    assert_eq!(code, 401);
    let (code, body) = http(addr, "POST", "/api/queues/q/pause", Some("s3cret")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"paused\":true"), "{body}");
    // Probes, metrics and the page itself stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/", "/assets/app.js"] {
        let (code, _) = http(addr, "GET", path, None).await;
        assert_eq!(code, 200, "{path}");
    }
}

#[tokio::test]
async fn dashboard_api_serves_jobs_and_admin_actions() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    let addr = node.http_addr();
    let id = c
        .broker
        .enqueue(job("ops", "x"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let (code, body) = http(addr, "GET", &format!("/api/jobs/{id}"), None).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"state\":\"ready\""), "{body}");
    let (code, _) = http(addr, "GET", "/api/jobs/no-such-job", None).await;
    assert_eq!(code, 404);
    let (code, _) = http(addr, "GET", "/api/queues/ops/jobs?state=bogus", None).await;
    assert_eq!(code, 400);
    let (code, body) = http(addr, "POST", "/api/queues/ops/redrive", None).await;
    assert_eq!((code, body.as_str()), (200, "{\"count\":0}"));
    let (code, body) = http(addr, "POST", &format!("/api/jobs/{id}/retry"), None).await;
    assert_eq!(code, 409, "a ready job cannot be retried: {body}");
}

// ---------------------------------------------------------------- headless Chromium

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=...`),
/// letting timers and fetches run for up to 5 s of virtual time. Returns stdout.
async fn chromium_run(mode: &str, url: &str) -> String {
    let bin = tokio::task::spawn_blocking(taskraft_tests::setup::chromium)
        .await
        .expect("installing chromium");
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1400,1000",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(mode)
    .arg(url)
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium {mode} {url} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_queues_and_retries_a_dead_job_in_chromium() {
    let node = InProcNode::start().await;
    let mut c = node.clients().await;
    for i in 0..3 {
        c.broker
            .enqueue(job("emails", &format!("e{i}")))
            .await
            .unwrap();
    }
    for i in 0..2 {
        c.broker
            .enqueue(job("reports", &format!("r{i}")))
            .await
            .unwrap();
    }
    let got = c
        .broker
        .lease(lease("emails", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let dead = got[0].job_id.clone();
    c.broker
        .nack(pb::NackRequest {
            job_id: dead.clone(),
            lease_id: got[0].lease_id.clone(),
            error: "smtp relay refused the message".into(),
            dead_letter: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let base = format!("http://{}/", node.http_addr());

    // A picture for people.
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    chromium_run(
        &format!("--screenshot={}", png.display()),
        &format!("{base}#dead=emails"),
    )
    .await;
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        png.display()
    );

    // The rendered DOM has every queue with its counts, and the dead job's error.
    let dom = chromium_run("--dump-dom", &format!("{base}#dead=emails")).await;
    assert!(
        dom.contains(r#"data-queue="emails" data-counts="ready=2 scheduled=0 leased=0 dead=1 succeeded=0 cancelled=0""#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"data-queue="reports" data-counts="ready=2 scheduled=0 leased=0 dead=0 succeeded=0 cancelled=0""#),
        "{dom}"
    );
    assert!(dom.contains("smtp relay refused the message"), "{dom}");
    assert!(dom.contains(&format!(r#"data-retry="{dead}""#)), "{dom}");
    assert!(dom.contains("role-leader"), "{dom}");

    // Press the dead job's retry button in the browser.
    let dom = chromium_run("--dump-dom", &format!("{base}#dead=emails&retry={dead}")).await;
    assert!(dom.contains(&format!("retried {dead}: now ready")), "{dom}");
    let j = get_job(&mut c, &dead).await;
    assert_eq!(j.state, pb::JobState::Ready as i32, "{j:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_the_token_when_one_is_set() {
    let node = InProcNode::start_with(|c| c.token = Some("s3cret".into())).await;
    let dom = chromium_run("--dump-dom", &format!("http://{}/", node.http_addr())).await;
    // The login box is shown and the main view hidden.
    assert!(dom.contains(r#"<section id="login">"#), "{dom}");
    assert!(dom.contains(r#"<main id="main" hidden="">"#), "{dom}");
}
