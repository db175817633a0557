//! `failover`: SIGKILL the leader of a `--spawn-cluster` while callers enqueue, and
//! time how long it takes until a write succeeds again.
//!
//! The row's latency columns describe the Enqueue calls that succeeded; the failover
//! time (kill to first successful write issued after the kill, measured by a probe on a
//! surviving node) is in the notes and in the JSON as `failover_ms`. Calls that fail
//! while there is no leader are expected and are not counted as errors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use taskraft_proto::v1 as pb;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{collect, job, queue_name, Params};
use crate::client::Pool;
use crate::report::{Report, Tally};
use crate::spawn::SpawnedCluster;

/// Load before the kill, and after the first successful write.
const STEADY: Duration = Duration::from_secs(2);

/// The leader as node `addr` sees it (0 while unknown).
async fn leader_seen_by(addr: &str) -> u64 {
    match Pool::connect(&[addr.to_string()], 1, None).await {
        Ok(p) => p
            .admin()
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await
            .map(|r| r.into_inner().leader_id)
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Runs the scenario once.
pub async fn run(pool: &Pool, p: &Params, cluster: &mut SpawnedCluster) -> Result<Report> {
    if cluster.nodes.len() < 3 {
        bail!("failover needs --spawn-cluster 3 or more");
    }
    let addrs = cluster.addrs();
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let l = leader_seen_by(&addrs[0]).await;
        if l != 0 {
            break l;
        }
        if Instant::now() > deadline {
            bail!("no leader elected");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let queue = queue_name("failover");
    let payload = p.payload();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..p.concurrency.unwrap_or(8).max(1) {
        let mut broker = pool.broker(i);
        let (stop, queue, payload) = (stop.clone(), queue.clone(), payload.clone());
        set.spawn(async move {
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                match broker.enqueue(job(&queue, &payload)).await {
                    Ok(_) => t.ok(1, sent.elapsed()),
                    // No leader yet: expected during the failover, not a benchmark error.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            t
        });
    }
    tokio::time::sleep(STEADY).await;

    let survivor = addrs
        .iter()
        .enumerate()
        .find(|(i, _)| *i as u64 + 1 != leader)
        .map(|(_, a)| a.clone())
        .expect("a survivor");
    let probe_pool = Pool::connect(std::slice::from_ref(&survivor), 1, None).await?;
    let mut probe = probe_pool.broker(0);
    cluster.nodes[leader as usize - 1].kill9();
    let killed = Instant::now();
    // When the survivor first names a new leader (election time, seen from outside).
    let elected = tokio::spawn(async move {
        let admin_pool = Pool::connect(&[survivor], 1, None).await.ok()?;
        loop {
            let st = admin_pool
                .admin()
                .get_cluster_status(pb::GetClusterStatusRequest {})
                .await
                .ok()?;
            let l = st.into_inner().leader_id;
            if l != 0 && l != leader {
                return Some(killed.elapsed());
            }
            if killed.elapsed() > Duration::from_secs(60) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let failover = loop {
        if probe.enqueue(job(&queue, &payload)).await.is_ok() {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("no write succeeded within 60 s of killing leader {leader}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    tokio::time::sleep(STEADY).await;
    stop.store(true, Ordering::Relaxed);
    let tally = collect(set).await?;
    let elapsed = start.elapsed();
    let new_leader = leader_seen_by(&addrs[(leader as usize) % addrs.len()]).await;
    let elected = elected.await.ok().flatten();
    let mut report = Report::new(
        "failover",
        &queue,
        tally,
        elapsed,
        "Enqueue call (successful)",
    );
    report.failover_ms = Some(failover.as_secs_f64() * 1000.0);
    report.notes.insert(
        0,
        format!(
            "failover: first successful write {:.0} ms after SIGKILL of leader {leader} (new leader {new_leader}, known to a survivor after {:.0} ms)",
            failover.as_secs_f64() * 1000.0,
            elected.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        ),
    );
    Ok(report)
}
