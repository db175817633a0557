//! `enqueue`: single `Enqueue` calls from many callers (one Raft entry per job), and
//! `enqueue-batch`: `EnqueueBatch` calls (one Raft entry per batch).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{collect, enqueue_batches, job, queue_name, Params};
use taskraft_proto::v1 as pb;

use crate::client::Pool;
use crate::report::{Report, Tally};

/// Runs `enqueue`: `--jobs` (20,000) single calls from `--concurrency` (64) callers,
/// or with `--stream` as many jobs in flight over `EnqueueStream`s.
pub async fn single(pool: &Pool, p: &Params) -> Result<Report> {
    if p.stream {
        return streamed(pool, p).await;
    }
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

/// `enqueue --stream`: one `EnqueueStream` per connection; each keeps its share of
/// `--concurrency` jobs in flight and counts each job from its send to its answer.
async fn streamed(pool: &Pool, p: &Params) -> Result<Report> {
    let n = p.jobs.unwrap_or(20_000);
    let concurrency = p.concurrency.unwrap_or(64).max(1);
    let streams = pool.connections().clamp(1, concurrency);
    let queue = queue_name("enqueue-stream");
    let payload = p.payload();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..streams {
        let window = concurrency / streams + usize::from(i < concurrency % streams);
        let mut broker = pool.broker(i);
        let next = next.clone();
        let req = job(&queue, &payload);
        set.spawn(async move {
            let mut t = Tally::default();
            let (tx, rx) = tokio::sync::mpsc::channel(window);
            let permits = Arc::new(tokio::sync::Semaphore::new(window));
            let sent_at = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
            let sender = {
                let (permits, sent_at) = (permits.clone(), sent_at.clone());
                tokio::spawn(async move {
                    loop {
                        let Ok(permit) = permits.acquire().await else {
                            return;
                        };
                        permit.forget();
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if seq >= n {
                            return;
                        }
                        sent_at.lock().unwrap().insert(seq, Instant::now());
                        let msg = pb::EnqueueStreamRequest {
                            seq,
                            job: Some(req.clone()),
                        };
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                })
            };
            let rx = tokio_stream::wrappers::ReceiverStream::new(rx);
            match broker.enqueue_stream(rx).await {
                Ok(answers) => {
                    let mut answers = answers.into_inner();
                    loop {
                        match answers.message().await {
                            Ok(Some(a)) => {
                                let sent = sent_at.lock().unwrap().remove(&a.seq);
                                let took = sent.map(|s| s.elapsed()).unwrap_or_default();
                                if a.code == 0 {
                                    t.ok(1, took);
                                } else {
                                    t.error(format!("code {}: {}", a.code, a.message));
                                }
                                permits.add_permits(1);
                            }
                            Ok(None) => break,
                            Err(e) => {
                                t.error(e);
                                break;
                            }
                        }
                    }
                }
                Err(e) => t.error(e),
            }
            sender.abort();
            t
        });
    }
    let tally = collect(set).await?;
    let mut report = Report::new(
        "enqueue-stream",
        &queue,
        tally,
        start.elapsed(),
        "job on EnqueueStream",
    );
    report.notes.insert(
        0,
        format!(
            "{streams} streams, {concurrency} jobs in flight, payload {} B",
            p.payload_size
        ),
    );
    Ok(report)
}
