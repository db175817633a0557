//! The named scenarios. Each one uses a fresh queue (`bench-<scenario>-<unix ms>`), so
//! runs against the same node never see each other's jobs, and each one ends by itself:
//! callers share a job counter and stop when it reaches `--jobs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use bytes::Bytes;
use taskraft_proto::v1 as pb;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::Pool;
use crate::report::{Report, Tally};

pub mod backlog;
pub mod enqueue;
pub mod failover;
pub mod latency;
pub mod lifecycle;
pub mod retention;
pub mod sdk_lifecycle;

/// Knobs shared by the scenarios; `None` means the scenario's own default.
#[derive(Clone, Debug)]
pub struct Params {
    /// Jobs to enqueue (and, in `lifecycle`, to process).
    pub jobs: Option<u64>,
    /// Concurrent callers.
    pub concurrency: Option<usize>,
    /// Jobs per `EnqueueBatch` call.
    pub batch: usize,
    /// Payload bytes per job.
    pub payload_size: usize,
    /// `lifecycle` workers.
    pub workers: usize,
    /// `lifecycle` jobs per Lease call.
    pub lease_batch: u32,
    /// `latency` target rate in jobs/s.
    pub rate: f64,
    /// `latency` run time.
    pub duration: Duration,
    /// `enqueue` over `EnqueueStream`.
    pub stream: bool,
}

impl Params {
    /// A payload of `--payload-size` bytes.
    pub fn payload(&self) -> Bytes {
        Bytes::from(vec![b'x'; self.payload_size])
    }
}

/// A queue name no earlier run used.
pub fn queue_name(scenario: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("bench-{scenario}-{ms}")
}

/// One job of the benchmark.
pub fn job(queue: &str, payload: &Bytes) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: queue.to_string(),
        payload: payload.clone(),
        job_type: "bench".into(),
        ..Default::default()
    }
}

/// Enqueues `n` jobs into `queue` in `EnqueueBatch` calls of `batch` jobs from
/// `concurrency` callers; used by `enqueue-batch` and by `lifecycle`'s preload.
pub async fn enqueue_batches(
    pool: &Pool,
    name: &str,
    queue: &str,
    n: u64,
    batch: usize,
    concurrency: usize,
    payload: Bytes,
) -> Result<Report> {
    let done = Arc::new(AtomicU64::new(0));
    enqueue_batches_counted(pool, name, queue, n, batch, concurrency, payload, done).await
}

/// [`enqueue_batches`] that also adds every accepted job to `done` as it goes, so a
/// progress printer can read it (`backlog`).
#[allow(clippy::too_many_arguments)]
pub async fn enqueue_batches_counted(
    pool: &Pool,
    name: &str,
    queue: &str,
    n: u64,
    batch: usize,
    concurrency: usize,
    payload: Bytes,
    done: Arc<AtomicU64>,
) -> Result<Report> {
    let batch = batch.max(1) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..concurrency.max(1) {
        let mut broker = pool.broker(i);
        let (next, done) = (next.clone(), done.clone());
        let queue = queue.to_string();
        let payload = payload.clone();
        set.spawn(async move {
            let mut t = Tally::default();
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= n {
                    break;
                }
                let count = batch.min(n - from);
                let jobs = (0..count).map(|_| job(&queue, &payload)).collect();
                let sent = Instant::now();
                match broker.enqueue_batch(pb::EnqueueBatchRequest { jobs }).await {
                    Ok(r) => {
                        let accepted = r.into_inner().results.len() as u64;
                        t.ok(accepted, sent.elapsed());
                        done.fetch_add(accepted, Ordering::Relaxed);
                    }
                    Err(e) => t.error(e),
                }
            }
            t
        });
    }
    let tally = collect(set).await?;
    let mut report = Report::new(name, queue, tally, start.elapsed(), "EnqueueBatch call");
    report
        .notes
        .insert(0, format!("batch {batch}, concurrency {concurrency}"));
    Ok(report)
}

/// Waits for every caller and merges their tallies.
pub async fn collect(mut set: JoinSet<Tally>) -> Result<Tally> {
    let mut total = Tally::default();
    while let Some(t) = set.join_next().await {
        total.merge(t?);
    }
    Ok(total)
}
