//! [`Batcher`]: client-side batching for high-rate producers.
//!
//! Each enqueue through a batcher goes into a channel; one background task takes the
//! first waiting job, keeps collecting for `linger` (or until `max_batch`), and sends
//! the lot as one `EnqueueBatch` call, i.e. one Raft log entry. Each caller's future
//! resolves with its own job id:
//!
//! ```text
//!  enqueue ─┐
//!  enqueue ─┼─> channel ─> [linger 5 ms | 500 jobs] ─> EnqueueBatch ─> ids back to callers
//!  enqueue ─┘                    (up to 4 batches in flight)
//! ```
//!
//! A batch is all-or-nothing on the server; when it is refused as invalid, the
//! batcher resends its jobs one by one so only the bad job's caller sees the error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::options::{Enqueued, NewJob};
use crate::{Client, Error};

/// Settings of a [`Batcher`].
#[derive(Debug, Clone)]
pub struct BatcherOptions {
    linger: Duration,
    max_batch: usize,
    max_in_flight: usize,
}

impl Default for BatcherOptions {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            max_batch: 500,
            max_in_flight: 4,
        }
    }
}

impl BatcherOptions {
    /// Defaults: linger 5 ms, at most 500 jobs per batch, 4 batches in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long to wait for more jobs after the first one of a batch arrives.
    pub fn linger(mut self, d: Duration) -> Self {
        self.linger = d;
        self
    }

    /// Most jobs per `EnqueueBatch` call (1..=10,000).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.clamp(1, 10_000);
        self
    }

    /// Most batch calls outstanding at once (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
}

/// Counters of a [`Batcher`], for tuning `linger` and `max_batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatcherStats {
    /// `EnqueueBatch` calls made.
    pub batches: u64,
    /// Jobs sent in them.
    pub jobs: u64,
}

struct Pending {
    job: NewJob,
    reply: oneshot::Sender<Result<Enqueued, Error>>,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    jobs: AtomicU64,
}

/// Coalesces concurrent enqueues into `EnqueueBatch` calls. Cheap to clone; the
/// background task stops when the last clone is dropped.
///
/// ```no_run
/// # async fn demo(client: taskraft::Client) -> Result<(), taskraft::Error> {
/// let batcher = client.batcher(taskraft::BatcherOptions::new());
/// let ids = futures::future::try_join_all(
///     (0..1000).map(|i| batcher.enqueue("events", format!("event {i}"))),
/// ).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Batcher {
    pub(crate) fn start(client: Client, options: BatcherOptions) -> Self {
        let (tx, rx) = mpsc::channel(options.max_batch * 4);
        let counters = Arc::new(Counters::default());
        tokio::spawn(collect(client, options, rx, counters.clone()));
        Self { tx, counters }
    }

    /// Enqueues `payload` on `queue` in the next batch; returns the job id.
    pub async fn enqueue(&self, queue: &str, payload: impl Into<Bytes>) -> Result<String, Error> {
        Ok(self.enqueue_job(NewJob::new(queue, payload)).await?.job_id)
    }

    /// Enqueues one [`NewJob`] in the next batch.
    pub async fn enqueue_job(&self, job: NewJob) -> Result<Enqueued, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { job, reply })
            .await
            .map_err(|_| Error::Closed("the batcher stopped"))?;
        rx.await
            .map_err(|_| Error::Closed("the batcher dropped the job"))?
    }

    /// Calls made and jobs sent so far.
    pub fn stats(&self) -> BatcherStats {
        BatcherStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            jobs: self.counters.jobs.load(Ordering::Relaxed),
        }
    }
}

async fn collect(
    client: Client,
    options: BatcherOptions,
    mut rx: mpsc::Receiver<Pending>,
    counters: Arc<Counters>,
) {
    let in_flight = Arc::new(Semaphore::new(options.max_in_flight));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger_end = Instant::now() + options.linger;
        while batch.len() < options.max_batch {
            match tokio::time::timeout_at(linger_end, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .jobs
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        tokio::spawn(send(client.clone(), batch, permit));
    }
}

async fn send(client: Client, batch: Vec<Pending>, _permit: OwnedSemaphorePermit) {
    let jobs: Vec<NewJob> = batch.iter().map(|p| p.job.clone()).collect();
    match client.enqueue_batch(jobs).await {
        Ok(results) if results.len() == batch.len() => {
            for (p, r) in batch.into_iter().zip(results) {
                let _ = p.reply.send(Ok(r));
            }
        }
        Ok(results) => {
            let e = Error::Server {
                code: tonic::Code::Internal,
                message: format!(
                    "EnqueueBatch answered {} results for {} jobs",
                    results.len(),
                    batch.len()
                ),
            };
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
        Err(Error::InvalidArgument(_)) if batch.len() > 1 => {
            // One bad job refuses the whole batch: resend singly so only it fails.
            let results =
                futures::future::join_all(batch.iter().map(|p| client.enqueue_job(p.job.clone())))
                    .await;
            for (p, r) in batch.into_iter().zip(results) {
                let _ = p.reply.send(r);
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}
