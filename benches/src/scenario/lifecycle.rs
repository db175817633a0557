//! `lifecycle`: the whole path of a job. Preload `--jobs` (100,000) with batches (timed
//! as its own row), then `--workers` (4) workers each loop
//!
//! ```text
//! Lease{max_jobs: --lease-batch, wait_ms: 1000} -> Ack every leased job concurrently
//! ```
//!
//! until every job is acked. Throughput is jobs / (first Lease .. last Ack); the latency
//! columns are per Ack call. At the end `GetQueueStats` must say succeeded == N and
//! ready == leased == 0, or the run counts as failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::future::join_all;
use taskraft_proto::v1 as pb;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{enqueue_batches, queue_name, Params};
use crate::client::Pool;
use crate::report::{histogram, record, Report, Tally};

/// Long-poll of each Lease call.
const LEASE_WAIT_MS: u64 = 1_000;
/// A worker gives up after this many empty long polls in a row (jobs missing).
const MAX_EMPTY_POLLS: u32 = 5;
/// A worker gives up after this many failed Lease calls in a row (node gone).
const MAX_LEASE_ERRORS: u32 = 20;
/// Lease length: far longer than a run, so nothing is redelivered mid-run.
const VISIBILITY_MS: u64 = 300_000;

/// Runs `lifecycle`; returns the preload row and the lifecycle row.
pub async fn run(pool: &Pool, p: &Params) -> Result<Vec<Report>> {
    let n = p.jobs.unwrap_or(100_000);
    let queue = queue_name("lifecycle");
    let preload = enqueue_batches(
        pool,
        "lifecycle/preload",
        &queue,
        n,
        p.batch,
        p.concurrency.unwrap_or(8),
        p.payload(),
    )
    .await?;
    let expected = preload.tally.jobs;

    if p.stream {
        return streamed(pool, &queue, p, preload, n).await;
    }
    let d = drain(pool, &queue, p.workers, p.lease_batch, expected).await?;
    let lease_note = d.lease_note();
    let mut report = Report::new("lifecycle", &queue, d.acks, d.elapsed, "Ack call");
    report.notes.insert(
        0,
        format!(
            "{} workers, lease batch {}; {}",
            p.workers, p.lease_batch, lease_note
        ),
    );
    verify(pool, &queue, n, &mut report).await?;
    Ok(vec![preload, report])
}

/// Marks `report` verified when `queue` holds `n` succeeded jobs and nothing else.
async fn verify(pool: &Pool, queue: &str, n: u64, report: &mut Report) -> Result<()> {
    let stats = pool
        .admin()
        .get_queue_stats(pb::GetQueueStatsRequest {
            queue: queue.to_string(),
        })
        .await
        .context("GetQueueStats after the lifecycle run")?
        .into_inner();
    report.verified = stats.succeeded == n && stats.ready == 0 && stats.leased == 0;
    report.notes.push(format!(
        "verify: succeeded {} (want {n}), ready {}, leased {}, scheduled {}, dead {}",
        stats.succeeded, stats.ready, stats.leased, stats.scheduled, stats.dead
    ));
    Ok(())
}

/// `lifecycle --stream`: each worker holds one `Work` session with `--lease-batch`
/// credits, acks every pushed job on the stream and grants the credits back in chunks
/// of half the window as the answers come.
async fn streamed(
    pool: &Pool,
    queue: &str,
    p: &Params,
    preload: Report,
    n: u64,
) -> Result<Vec<Report>> {
    let expected = preload.tally.jobs;
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..p.workers.max(1) {
        let broker = pool.broker(i);
        let open = pb::WorkOpen {
            queues: vec![queue.to_string()],
            worker_id: format!("bench-stream-worker-{i}"),
            visibility_timeout_ms: VISIBILITY_MS,
            ..Default::default()
        };
        set.spawn(stream_worker(
            broker,
            open,
            p.lease_batch,
            acked.clone(),
            expected,
        ));
    }
    let mut acks = Tally::default();
    let mut last_ack = None::<Instant>;
    while let Some(w) = set.join_next().await {
        let (t, last) = w?;
        acks.merge(t);
        last_ack = last_ack.max(last);
    }
    let elapsed = last_ack.map_or_else(|| start.elapsed(), |t| t - start);
    let mut report = Report::new(
        "lifecycle-stream",
        queue,
        acks,
        elapsed,
        "Ack on Work stream",
    );
    report.notes.insert(
        0,
        format!("{} workers, {} credits each", p.workers, p.lease_batch),
    );
    verify(pool, queue, n, &mut report).await?;
    Ok(vec![preload, report])
}

/// One streaming worker: acks each pushed job, until `expected` jobs are acked in total
/// or nothing arrives for a while.
async fn stream_worker(
    mut broker: crate::client::Broker,
    open: pb::WorkOpen,
    credits: u32,
    acked: Arc<AtomicU64>,
    expected: u64,
) -> (Tally, Option<Instant>) {
    use pb::work_request::Kind as Up;
    use pb::work_response::Kind as Down;
    let mut t = Tally::default();
    let mut last = None;
    let (tx, rx) = tokio::sync::mpsc::channel(8192);
    let up = |kind, seq| pb::WorkRequest {
        kind: Some(kind),
        seq,
    };
    let _ = tx.send(up(Up::Open(open), 0)).await;
    let _ = tx.send(up(Up::Credit(credits.max(1)), 0)).await;
    let mut down = match broker
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => {
            t.error(e);
            return (t, last);
        }
    };
    let mut sent = std::collections::HashMap::new();
    let mut seq = 0u64;
    // Credits go back in chunks of half the window, so that a lease takes many jobs at
    // once (as a pull consumer's batch does), not one per ack.
    let mut owed = 0u32;
    let chunk = (credits / 2).max(1);
    loop {
        if acked.load(Ordering::Relaxed) >= expected && sent.is_empty() {
            break;
        }
        let wait = Duration::from_millis(LEASE_WAIT_MS * MAX_EMPTY_POLLS as u64);
        let msg = match tokio::time::timeout(wait, down.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                t.error(e);
                break;
            }
            Err(_) => break,
        };
        match msg.kind {
            Some(Down::Job(job)) => {
                seq += 1;
                sent.insert(seq, Instant::now());
                let ack = pb::AckRequest {
                    job_id: job.job_id,
                    lease_id: job.lease_id,
                    result: Bytes::new(),
                };
                if tx.send(up(Up::Ack(ack), seq)).await.is_err() {
                    break;
                }
            }
            Some(Down::Answer(a)) => {
                let took = sent.remove(&a.seq).map(|s| s.elapsed()).unwrap_or_default();
                if a.code == 0 {
                    t.ok(1, took);
                    acked.fetch_add(1, Ordering::Relaxed);
                    last = Some(Instant::now());
                } else {
                    t.error(format!("ack code {}: {}", a.code, a.message));
                }
                owed += 1;
                if owed >= chunk {
                    let _ = tx.send(up(Up::Credit(std::mem::take(&mut owed)), 0)).await;
                }
            }
            Some(Down::Opened(_)) => {}
            None => {}
        }
    }
    (t, last)
}

/// What [`drain`] measured.
pub struct Drained {
    /// Acks (the jobs processed) and their latencies.
    pub acks: Tally,
    /// Latency of the Lease calls that succeeded.
    pub leases: hdrhistogram::Histogram<u64>,
    /// First Lease .. last Ack.
    pub elapsed: Duration,
}

impl Drained {
    /// "Lease call p50 .. ms, p99 .. ms", for the notes.
    pub fn lease_note(&self) -> String {
        format!(
            "Lease call p50 {:.2} ms, p99 {:.2} ms",
            self.leases.value_at_quantile(0.5) as f64 / 1000.0,
            self.leases.value_at_quantile(0.99) as f64 / 1000.0,
        )
    }
}

/// The lifecycle's worker loop: `workers` workers lease up to `lease_batch` jobs from
/// `queue` and ack each leased job concurrently, until `expected` jobs are acked in
/// total (a worker acks everything it leased, so a few more may be), or the queue stays
/// empty, or Lease keeps failing. Also used by `backlog`.
pub async fn drain(
    pool: &Pool,
    queue: &str,
    workers: usize,
    lease_batch: u32,
    expected: u64,
) -> Result<Drained> {
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..workers.max(1) {
        let broker = pool.broker(i);
        let acked = acked.clone();
        let req = pb::LeaseRequest {
            queues: vec![queue.to_string()],
            worker_id: format!("bench-worker-{i}"),
            max_jobs: lease_batch.clamp(1, 1000),
            visibility_timeout_ms: VISIBILITY_MS,
            wait_ms: LEASE_WAIT_MS,
        };
        set.spawn(worker(broker, req, acked, expected));
    }
    let mut acks = Tally::default();
    let mut leases = histogram();
    let mut last_ack = None::<Instant>;
    while let Some(w) = set.join_next().await {
        let w = w?;
        acks.merge(w.acks);
        leases.add(&w.leases).expect("histograms share bounds");
        last_ack = last_ack.max(w.last_ack);
    }
    let elapsed = last_ack.map_or_else(|| start.elapsed(), |t| t - start);
    Ok(Drained {
        acks,
        leases,
        elapsed,
    })
}

/// What one worker saw.
struct WorkerTally {
    acks: Tally,
    leases: hdrhistogram::Histogram<u64>,
    last_ack: Option<Instant>,
}

/// Leases and acks until `expected` jobs are acked in total (by all workers), or the
/// queue stays empty for `MAX_EMPTY_POLLS` long polls, or Lease keeps failing.
async fn worker(
    mut broker: crate::client::Broker,
    req: pb::LeaseRequest,
    acked: Arc<AtomicU64>,
    expected: u64,
) -> WorkerTally {
    let mut w = WorkerTally {
        acks: Tally::default(),
        leases: histogram(),
        last_ack: None,
    };
    let mut empty = 0;
    let mut failed = 0;
    while acked.load(Ordering::Relaxed) < expected {
        let sent = Instant::now();
        let jobs = match broker.lease(req.clone()).await {
            Ok(r) => r.into_inner().jobs,
            Err(e) => {
                w.acks.error(format!("Lease: {e}"));
                failed += 1;
                if failed >= MAX_LEASE_ERRORS {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        failed = 0;
        record(&mut w.leases, sent.elapsed());
        if jobs.is_empty() {
            empty += 1;
            if empty >= MAX_EMPTY_POLLS {
                break;
            }
            continue;
        }
        empty = 0;
        let calls = jobs.into_iter().map(|j| {
            let mut b = broker.clone();
            async move {
                let sent = Instant::now();
                let r = b
                    .ack(pb::AckRequest {
                        job_id: j.job_id,
                        lease_id: j.lease_id,
                        result: Bytes::new(),
                    })
                    .await;
                (sent.elapsed(), r)
            }
        });
        for (latency, r) in join_all(calls).await {
            match r {
                Ok(_) => {
                    w.acks.ok(1, latency);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => w.acks.error(format!("Ack: {e}")),
            }
        }
        w.last_ack = Some(Instant::now());
    }
    w
}
