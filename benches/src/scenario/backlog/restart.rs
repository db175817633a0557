//! After a kill -9 and restart: how long until the node serves a linearizable read, and
//! until a `Lease` through it returns a job. Both probes poll on fresh connections (the
//! node is not listening at first) until a deadline.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use serde_json::json;
use taskraft_proto::v1 as pb;
use tokio::time::Instant;

use super::{queue_stats, secs, total, Run};
use crate::client::Pool;
use crate::probe::{self, size_opt};

/// Pause between attempts.
const POLL: Duration = Duration::from_millis(20);

impl Run<'_> {
    /// Phase 3: kill -9 the leader (or the only node), restart it, time the first read
    /// and the first leased job through it. False when a node died.
    pub(super) async fn restart(&mut self) -> Result<bool> {
        let v = self.leader().await?;
        self.restarted = Some(v);
        self.read_hwm(v);
        self.sampler.set_pid(v, None);
        self.nodes[v].restart()?;
        let pid = self.nodes[v].pid();
        self.sampler.set_pid(v, Some(pid));
        let addr = self.nodes[v].addr.to_string();
        let limit = Instant::now() + self.o.phase_timeout;
        let (queue, token) = (self.queue.clone(), self.o.token.clone());
        let probes = async {
            tokio::join!(
                first_read(&addr, token.as_deref(), &queue, limit),
                first_lease(&addr, token.as_deref(), &queue, limit)
            )
        };
        let node = &mut self.nodes[v];
        let watch = async {
            loop {
                if node.exited().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let (read, lease) = tokio::select! {
            r = probes => r,
            () = watch => (None, None),
        };
        if !self.all_alive("the restart") {
            return Ok(false);
        }
        let peak = self.read_hwm(v);
        let (id, jobs) = (self.ids[v], self.jobs);
        let who = if self.nodes.len() > 1 {
            format!("leader node {id}")
        } else {
            format!("node {id}")
        };
        match &read {
            Some((d, st)) => {
                self.verified &= total(st) == jobs;
                self.summary.push(format!(
                    "restart after kill -9 of {who}: a linearizable GetQueueStats answered after {:.2} s with {} jobs (want {jobs}: ready {}, leased {}, succeeded {})",
                    secs(*d), total(st), st.ready, st.leased, st.succeeded
                ));
            }
            None => {
                self.verified = false;
                self.summary.push(format!(
                    "restart after kill -9 of {who}: no GetQueueStats answer within {:?}",
                    self.o.phase_timeout
                ));
            }
        }
        let acked = lease.is_some_and(|l| l.1);
        self.verified &= acked;
        self.summary.push(match lease {
            Some((d, _)) => format!(
                "restart: a Lease returned a job after {:.2} s ({}); RSS peak while recovering {}, RSS now {}",
                secs(d),
                if acked { "acked" } else { "its ack failed" },
                size_opt(peak),
                size_opt(probe::rss(pid))
            ),
            None => format!(
                "restart: no Lease returned a job within {:?}",
                self.o.phase_timeout
            ),
        });
        self.details.insert(
            "restart".into(),
            json!({"node": id, "read_s": read.as_ref().map(|r| secs(r.0)),
                "read_count": read.as_ref().map(|r| total(&r.1)),
                "lease_s": lease.map(|l| secs(l.0)), "lease_acked": acked,
                "rss_peak_bytes": peak}),
        );
        Ok(true)
    }
}

/// Polls `addr` until a linearizable `GetQueueStats` of `queue` answers; returns the
/// time since the call and the answer.
async fn first_read(
    addr: &str,
    token: Option<&str>,
    queue: &str,
    limit: Instant,
) -> Option<(Duration, pb::QueueStats)> {
    let start = Instant::now();
    while Instant::now() < limit {
        if let Ok(pool) = Pool::connect(&[addr.to_string()], 1, token).await {
            if let Ok(st) = queue_stats(&pool, queue).await {
                return Some((start.elapsed(), st));
            }
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// Polls `addr` with `Lease` until one returns a job, then acks it (retrying the ack
/// until the deadline). Returns when the job arrived and whether the ack succeeded.
async fn first_lease(
    addr: &str,
    token: Option<&str>,
    queue: &str,
    limit: Instant,
) -> Option<(Duration, bool)> {
    let start = Instant::now();
    let req = pb::LeaseRequest {
        queues: vec![queue.to_string()],
        worker_id: "bench-restart-probe".into(),
        max_jobs: 1,
        visibility_timeout_ms: 60_000,
        wait_ms: 100,
    };
    while Instant::now() < limit {
        let Ok(pool) = Pool::connect(&[addr.to_string()], 1, token).await else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let mut broker = pool.broker(0);
        let Some(job) = broker
            .lease(req.clone())
            .await
            .ok()
            .and_then(|r| r.into_inner().jobs.into_iter().next())
        else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let got = start.elapsed();
        while Instant::now() < limit {
            let ack = pb::AckRequest {
                job_id: job.job_id.clone(),
                lease_id: job.lease_id.clone(),
                result: Bytes::new(),
            };
            if broker.ack(ack).await.is_ok() {
                return Some((got, true));
            }
            tokio::time::sleep(POLL).await;
        }
        return Some((got, false));
    }
    None
}
