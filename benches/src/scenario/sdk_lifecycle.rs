//! `sdk-lifecycle`: the `lifecycle` scenario done by the Rust SDK's [`taskraft::Worker`]
//! instead of raw gRPC calls, to measure what the SDK costs. Preload `--jobs` (100,000)
//! with batches (timed as its own row), then start `--workers` (4) SDK workers, each
//!
//! ```text
//! Worker { concurrency: --lease-batch, prefetch: 0, poll_wait: 1 s }   (env knobs below)
//!     .handler("bench", no-op)          leases, runs, acks (one Ack per job)
//! ```
//!
//! with its own `Client` of every node (in the order given, like `lifecycle`'s callers,
//! which all start on the first node). Throughput is jobs / (workers started .. the first
//! `GetQueueStats` poll, every 10 ms, that shows succeeded == N); then the workers shut
//! down. Verification: succeeded == N, ready == leased == 0, and the workers' reports add
//! up to N acks and nothing failed or given back.
//!
//! The latency columns stay empty: the SDK makes the Ack call inside the worker and does
//! not expose its duration. The notes show how many jobs each Lease call brought, from
//! the workers' reports.

use std::time::Duration;

use anyhow::{Context, Result};
use taskraft::{HandlerError, Job, Protocol, Worker};
use taskraft_proto::v1 as pb;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{enqueue_batches, queue_name, Params};
use crate::client::Pool;
use crate::report::{Report, Tally};

/// How often the scenario asks the queue's counts while the workers run.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// Long-poll of each of the workers' Lease calls (as in `lifecycle`).
const LEASE_WAIT: Duration = Duration::from_secs(1);
/// Lease length: far longer than a run, so nothing is redelivered mid-run.
const VISIBILITY: Duration = Duration::from_secs(300);
/// The run fails when succeeded has not moved for this long.
const STALL: Duration = Duration::from_secs(30);
/// Overrides the workers' `lease_linger` (humantime, e.g. `0s` for the old behaviour of
/// leasing as soon as one slot is free); unset: the SDK default.
const LINGER_ENV: &str = "TASKRAFT_BENCH_LEASE_LINGER";
/// Sets the workers' `prefetch` (default 0: at most `--lease-batch` jobs in hand, as in
/// `lifecycle`).
const PREFETCH_ENV: &str = "TASKRAFT_BENCH_PREFETCH";
/// The workers' protocol: `poll` (unset: Lease calls, as the README's rows measured) or
/// `stream` (one `Work` session per worker, the SDK's default).
const PROTOCOL_ENV: &str = "TASKRAFT_BENCH_SDK_PROTOCOL";

/// Runs `sdk-lifecycle` against `servers`; returns the preload row and the SDK row.
pub async fn run(
    pool: &Pool,
    p: &Params,
    servers: &[String],
    token: Option<&str>,
) -> Result<Vec<Report>> {
    let n = p.jobs.unwrap_or(100_000);
    let queue = queue_name("sdk-lifecycle");
    let preload = enqueue_batches(
        pool,
        "sdk-lifecycle/preload",
        &queue,
        n,
        p.batch,
        p.concurrency.unwrap_or(8),
        p.payload(),
    )
    .await?;
    let concurrency = p.lease_batch.clamp(1, 1000) as usize;
    let linger = match std::env::var(LINGER_ENV) {
        Ok(v) => Some(humantime::parse_duration(&v).with_context(|| format!("{LINGER_ENV}={v}"))?),
        Err(_) => None,
    };
    let protocol = match std::env::var(PROTOCOL_ENV).as_deref() {
        Err(_) | Ok("poll") => Protocol::Poll,
        Ok("stream") => Protocol::Stream,
        Ok(v) => anyhow::bail!("{PROTOCOL_ENV}={v}: want poll or stream"),
    };
    let prefetch = match std::env::var(PREFETCH_ENV) {
        Ok(v) => v.parse().with_context(|| format!("{PREFETCH_ENV}={v}"))?,
        Err(_) => 0,
    };

    let mut workers = Vec::new();
    for i in 0..p.workers.max(1) {
        let mut b = taskraft::Client::builder().addrs(servers.iter().cloned());
        if let Some(t) = token {
            b = b.token(t);
        }
        let client = b.connect().await.context("SDK client")?;
        let mut worker = Worker::builder(client).protocol(protocol);
        if let Some(d) = linger {
            worker = worker.lease_linger(d);
        }
        let worker = worker
            .queue(queue.clone())
            .concurrency(concurrency)
            .prefetch(prefetch)
            .poll_wait(LEASE_WAIT)
            .visibility_timeout(VISIBILITY)
            .shutdown_timeout(Duration::from_secs(10))
            .worker_id(format!("bench-sdk-worker-{i}"))
            .handler("bench", |_job: Job| async { Ok::<_, HandlerError>(()) })
            .build()
            .context("building an SDK worker")?;
        workers.push(worker);
    }

    let start = Instant::now();
    let mut set = JoinSet::new();
    let mut stops = Vec::new();
    for w in workers {
        let (tx, rx) = oneshot::channel::<()>();
        stops.push(tx);
        set.spawn(w.run_until(async move {
            let _ = rx.await;
        }));
    }

    let mut admin = pool.admin();
    let mut last = (0, Instant::now());
    let mut stalled = None;
    let elapsed = loop {
        tokio::time::sleep(POLL_EVERY).await;
        let s = admin
            .get_queue_stats(pb::GetQueueStatsRequest {
                queue: queue.clone(),
            })
            .await
            .context("GetQueueStats while the SDK workers run")?
            .into_inner();
        if s.succeeded >= n {
            break start.elapsed();
        }
        if s.succeeded != last.0 {
            last = (s.succeeded, Instant::now());
        } else if last.1.elapsed() > STALL {
            stalled = Some(format!(
                "stalled at succeeded {} for {STALL:?}; stopping",
                s.succeeded
            ));
            break start.elapsed();
        }
    };

    for tx in stops {
        let _ = tx.send(());
    }
    let mut tally = Tally::default();
    let (mut succeeded, mut failed, mut abandoned) = (0, 0, 0);
    let (mut leased, mut lease_calls) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(r) => {
                succeeded += r.succeeded;
                failed += r.failed;
                abandoned += r.abandoned;
                leased += r.leased;
                lease_calls += r.lease_calls;
            }
            Err(e) => tally.error(format!("worker: {e}")),
        }
    }
    tally.jobs = succeeded;
    tally.calls = lease_calls;

    let mut report = Report::new(
        "sdk-lifecycle",
        &queue,
        tally,
        elapsed,
        "none (the SDK does not expose Ack latency)",
    );
    report.notes.insert(
        0,
        format!(
            "{} SDK workers, concurrency {concurrency}, prefetch {prefetch}, lease linger {}, no-op handler; \
             {lease_calls} Lease calls (the calls column) brought {leased} jobs, {:.1} per call",
            p.workers,
            linger.map_or_else(|| "default".into(), |d| format!("{d:?}")),
            leased as f64 / lease_calls.max(1) as f64,
        ),
    );
    if let Some(s) = stalled {
        report.notes.push(s);
        report.verified = false;
    }
    let stats = admin
        .get_queue_stats(pb::GetQueueStatsRequest {
            queue: queue.clone(),
        })
        .await
        .context("GetQueueStats after the sdk-lifecycle run")?
        .into_inner();
    report.verified &= stats.succeeded == n
        && stats.ready == 0
        && stats.leased == 0
        && succeeded == n
        && failed == 0
        && abandoned == 0;
    report.notes.push(format!(
        "verify: succeeded {} (want {n}), ready {}, leased {}, scheduled {}, dead {}; \
         workers acked {succeeded}, failed {failed}, gave back {abandoned}",
        stats.succeeded, stats.ready, stats.leased, stats.scheduled, stats.dead
    ));
    Ok(vec![preload, report])
}
