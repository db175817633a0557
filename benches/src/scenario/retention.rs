//! `retention`: disk use of a node through the life of N jobs (default 1,000,000):
//! empty, after they are enqueued and completed, and after their result TTL removed
//! them; plus how long the retention sweep of all N took.
//!
//! Needs `--spawn` (it reads the spawned node's data dir). The node gets
//! `--result-ttl` and `--snapshot-max-age` from this scenario's flags, so the sweep and
//! the compaction that follows happen within the run.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use taskraft_proto::v1 as pb;
use tokio::time::Instant;

use super::{lifecycle, Params};
use crate::client::Pool;
use crate::report::Report;

/// Disk space used by every file under `dir`, as `du` counts it (allocated blocks):
/// redb extends its files sparsely, so their length overstates what the disk holds.
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Runs the scenario against a spawned node whose data lives in `data_dir`.
pub async fn run(
    pool: &Pool,
    p: &Params,
    data_dir: &Path,
    result_ttl: Duration,
) -> Result<Vec<Report>> {
    let mut p = p.clone();
    p.jobs = Some(p.jobs.unwrap_or(1_000_000));
    p.batch = p.batch.max(1000);
    p.lease_batch = p.lease_batch.max(1000);
    let empty = dir_bytes(data_dir);
    // Track the peak while jobs are enqueued and processed.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(empty));
    let sampler = {
        let (peak, dir) = (peak.clone(), data_dir.to_path_buf());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(dir_bytes(&dir), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mut rows = lifecycle::run(pool, &p).await?;
    let completed_at = Instant::now();
    sampler.abort();
    let full = dir_bytes(data_dir);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed).max(full);
    if let Some(r) = rows.last_mut() {
        // Jobs start expiring while later ones are still processed, so the lifecycle's
        // own end-of-run count does not apply here: every ack must have succeeded.
        r.verified = r.tally.jobs == p.jobs.unwrap_or_default() && r.tally.errors == 0;
        r.notes.retain(|n| !n.starts_with("verify:"));
        r.notes.push(format!(
            "verify: {} acks succeeded (jobs expire during the run, so stats are not compared)",
            r.tally.jobs
        ));
    }
    let queue = rows
        .last()
        .map(|r| r.queue.clone())
        .context("lifecycle rows")?;

    // Every job finished before `completed_at`, so all have expired by then + TTL.
    let all_expired = completed_at + result_ttl;
    let deadline = all_expired + Duration::from_secs(600);
    loop {
        let queues = pool
            .admin()
            .list_queues(pb::ListQueuesRequest {})
            .await
            .context("ListQueues")?
            .into_inner()
            .queues;
        if queues.iter().all(|q| q.queue != queue) {
            break;
        }
        if Instant::now() > deadline {
            bail!("queue {queue} still has jobs 10 minutes after their TTL");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = Instant::now();
    let sweep = gone.saturating_duration_since(all_expired);
    let at_sweep = dir_bytes(data_dir);

    // Wait for the snapshot and log compaction that follow (disk stops shrinking).
    let mut last = at_sweep;
    let mut stable_since = Instant::now();
    let settle_deadline = Instant::now() + Duration::from_secs(300);
    while stable_since.elapsed() < Duration::from_secs(20) && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = dir_bytes(data_dir);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    let compacted = last;
    let report = rows.last_mut().context("lifecycle row")?;
    report.notes.push(format!(
        "disk: empty {}, peak while {} jobs were enqueued and completed {}, at the end of processing {}, when retention had removed them all {}, after snapshot + compaction {}",
        mib(empty),
        p.jobs.unwrap_or_default(),
        mib(peak),
        mib(full),
        mib(at_sweep),
        mib(compacted)
    ));
    report.notes.push(format!(
        "retention: jobs were removed as their TTL passed; the queue was empty {:.2} s after the last one's TTL (result TTL {:?}); the cost of one sweep entry is in the criterion bench apply/retention_sweep_10k",
        sweep.as_secs_f64(),
        result_ttl
    ));
    Ok(rows)
}
