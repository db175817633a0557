//! `enqueue`: single `Enqueue` calls from many callers (one Raft entry per job), and
//! `enqueue-batch`: `EnqueueBatch` calls (one Raft entry per batch).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{collect, enqueue_batches, job, queue_name, Params};
use crate::client::Pool;
use crate::report::{Report, Tally};

/// Runs `enqueue`: `--jobs` (20,000) single calls from `--concurrency` (64) callers.
pub async fn single(pool: &Pool, p: &Params) -> Result<Report> {
    let n = p.jobs.unwrap_or(20_000);
    let concurrency = p.concurrency.unwrap_or(64).max(1);
    let queue = queue_name("enqueue");
    let payload = p.payload();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..concurrency {
        let mut broker = pool.broker(i);
        let next = next.clone();
        let req = job(&queue, &payload);
        set.spawn(async move {
            let mut t = Tally::default();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let sent = Instant::now();
                match broker.enqueue(req.clone()).await {
                    Ok(_) => t.ok(1, sent.elapsed()),
                    Err(e) => t.error(e),
                }
            }
            t
        });
    }
    let tally = collect(set).await?;
    let mut report = Report::new("enqueue", &queue, tally, start.elapsed(), "Enqueue call");
    report.notes.insert(
        0,
        format!("concurrency {concurrency}, payload {} B", p.payload_size),
    );
    Ok(report)
}

/// Runs `enqueue-batch`: `--jobs` (100,000) in batches of `--batch` (100) from
/// `--concurrency` (8) callers.
pub async fn batch(pool: &Pool, p: &Params) -> Result<Report> {
    let n = p.jobs.unwrap_or(100_000);
    let concurrency = p.concurrency.unwrap_or(8);
    let queue = queue_name("enqueue-batch");
    enqueue_batches(
        pool,
        "enqueue-batch",
        &queue,
        n,
        p.batch,
        concurrency,
        p.payload(),
    )
    .await
}
