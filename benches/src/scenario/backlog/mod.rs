//! `backlog`: what a deep queue costs a node, and whether it still recovers and serves.
//! Needs `--spawn` (one node) or `--spawn-cluster N`: it kills, restarts and wipes the
//! spawned processes and reads their memory, data dirs and logs.
//!
//! ```text
//!  1 enqueue --jobs (10M x 256 B)     EnqueueBatch of --batch (1000) from 8 callers
//!  2 snapshot                         wait for each node's first snapshot covering the
//!                                     backlog; times from the node's log
//!  3 kill -9 + restart                the node (3 nodes: the leader), same flags and
//!                                     data; time to a linearizable read, to a leased job
//!  4 drain at depth, then empty       lifecycle workers ack --drain jobs of the backlog,
//!                                     then the same count from a fresh queue; the ratio
//!  5 (3+ nodes) wipe a follower       kill -9, delete its data, RemoveNode, restart it,
//!                                     AddNode; time until its applied index reaches the
//!                                     leader's
//!  all along: VmRSS and data-dir bytes of every node every 500 ms, progress every 5 s
//! ```
//!
//! The broker has no call that triggers a snapshot; nodes take one by themselves
//! (`--snapshot-every` entries, or `--snapshot-max-age` after the last write), so phase 2
//! waits for it and reads its start and end from the log (`nodelog.rs`). Memory peaks
//! are the kernel's `VmHWM`, reset at a phase's start where the kernel allows, together
//! with the samples.
//!
//! Rows: `backlog/enqueue`, `backlog/drain` (at depth), `backlog/drain-empty` (the
//! baseline), and `backlog`, whose notes and JSON `details` hold everything else. The run
//! fails (exit 1) when a count is wrong, a drain does not verify, a node exits by itself,
//! or the wiped follower does not catch up; a wait that runs out is bounded by
//! `--phase-timeout`.

mod catch_up;
mod drain;
mod progress;
mod restart;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use taskraft_proto::v1 as pb;
use tokio::time::Instant;

use super::{enqueue_batches_counted, queue_name, Params};
use crate::client::Pool;
use crate::nodelog;
use crate::probe::{self, size, size_opt, Sampler};
use crate::report::{Report, Tally};
use crate::scenario::retention::dir_bytes;
use crate::spawn::SpawnedNode;
use progress::Progress;

/// How often memory and data dirs are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// `backlog` flags beyond [`Params`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Jobs leased and acked at depth (and in the empty-queue baseline).
    pub drain: u64,
    /// Bound on each wait: snapshot, restart, catch-up.
    pub phase_timeout: Duration,
    /// HTTP/2 connections per server.
    pub connections: usize,
    /// Bearer token.
    pub token: Option<String>,
    /// Send load to the leader only (3 nodes).
    pub leader_only: bool,
    /// How the wiped follower comes back.
    pub rejoin: Rejoin,
}

/// How a wiped follower rejoins the cluster (see `catch_up.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Rejoin {
    /// Admin.RemoveNode, restart with --peers of the other nodes, Admin.AddNode.
    ReAdd,
    /// Restart with the same --id and --peers.
    SamePeers,
}

impl Rejoin {
    fn name(self) -> &'static str {
        match self {
            Rejoin::ReAdd => "re-add",
            Rejoin::SamePeers => "same-peers",
        }
    }
}

/// A node's `GetClusterStatus` (answered locally, no read barrier) on a fresh
/// connection; `None` while it does not answer.
async fn status(addr: &str, token: Option<&str>) -> Option<pb::ClusterStatus> {
    let pool = Pool::connect(&[addr.to_string()], 1, token).await.ok()?;
    let st = pool
        .admin()
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .ok()?;
    Some(st.into_inner())
}

/// Linearizable counts of `queue`.
async fn queue_stats(pool: &Pool, queue: &str) -> Result<pb::QueueStats> {
    Ok(pool
        .admin()
        .get_queue_stats(pb::GetQueueStatsRequest {
            queue: queue.to_string(),
        })
        .await
        .with_context(|| format!("GetQueueStats {queue}"))?
        .into_inner())
}

/// Every job of a queue, whatever its state.
fn total(s: &pb::QueueStats) -> u64 {
    s.ready + s.scheduled + s.leased + s.succeeded + s.dead + s.cancelled
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Runs the scenario on `nodes` (one spawned node, or a spawned cluster).
pub async fn run(nodes: &mut [SpawnedNode], p: &Params, o: &Options) -> Result<Vec<Report>> {
    let start = Instant::now();
    let mut ids = Vec::new();
    for n in nodes.iter() {
        let st = status(&n.addr.to_string(), o.token.as_deref())
            .await
            .with_context(|| format!("GetClusterStatus of {}", n.addr))?;
        ids.push(st.node_id);
    }
    let sampler = Arc::new(Sampler::start(
        nodes.iter().map(|n| n.pid()).collect(),
        nodes.iter().map(|n| n.data_dir()).collect(),
        SAMPLE_EVERY,
    ));
    let jobs = p.jobs.unwrap_or(10_000_000);
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(sampler.clone(), ids.clone(), done.clone(), jobs);
    let mut r = Run {
        hwm: vec![0; nodes.len()],
        nodes,
        p,
        o,
        ids,
        jobs,
        concurrency: p.concurrency.unwrap_or(8),
        queue: queue_name("backlog"),
        sampler,
        summary: Vec::new(),
        details: Map::new(),
        verified: true,
        restarted: None,
    };

    let mut rows = Vec::new();
    let (enq, end_index, enqueued_at) = r.enqueue(done).await?;
    rows.push(enq);
    progress.set("snapshot");
    if r.snapshot(end_index, enqueued_at).await? {
        progress.set("restart");
        if r.restart().await? {
            progress.set("drain");
            let (deep, want, depth) = r.drain_deep().await?;
            progress.set("drain-empty");
            let empty = r.drain_empty(want).await?;
            r.compare_drains(&deep, &empty, depth);
            rows.extend([deep, empty]);
            if r.nodes.len() >= 3 {
                progress.set("catch-up");
                r.catch_up().await?;
            } else {
                r.summary
                    .push("catch-up of a wiped follower: needs --spawn-cluster 3 or more".into());
            }
        }
    }
    drop(progress);
    rows.push(r.finish(start.elapsed()));
    Ok(rows)
}

/// The scenario's state between phases.
struct Run<'a> {
    nodes: &'a mut [SpawnedNode],
    p: &'a Params,
    o: &'a Options,
    /// Raft node id of each spawned node (same order).
    ids: Vec<u64>,
    jobs: u64,
    concurrency: usize,
    queue: String,
    sampler: Arc<Sampler>,
    /// Highest `VmHWM` read per node, over every process it ran as.
    hwm: Vec<u64>,
    /// Notes of the `backlog` row.
    summary: Vec<String>,
    /// JSON `details` of the `backlog` row.
    details: Map<String, Value>,
    verified: bool,
    /// The node killed and restarted in phase 3.
    restarted: Option<usize>,
}

impl Run<'_> {
    fn token(&self) -> Option<&str> {
        self.o.token.as_deref()
    }

    /// Reads node `i`'s `VmHWM` now (and keeps the highest).
    fn read_hwm(&mut self, i: usize) -> Option<u64> {
        let v = probe::peak_rss(self.nodes[i].pid());
        if let Some(v) = v {
            self.hwm[i] = self.hwm[i].max(v);
        }
        v
    }

    /// The node (index) that says it leads, with the highest term.
    async fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + self.o.phase_timeout;
        loop {
            let mut best = None::<(usize, u64)>;
            for (i, n) in self.nodes.iter().enumerate() {
                if let Some(st) = status(&n.addr.to_string(), self.token()).await {
                    if st.leader_id == st.node_id && best.is_none_or(|(_, t)| st.term > t) {
                        best = Some((i, st.term));
                    }
                }
            }
            if let Some((i, _)) = best {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no node says it leads after {:?}", self.o.phase_timeout);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connections for a load phase: the leader only with `--leader-only`, else every
    /// node (followers forward to the leader).
    async fn pool(&self) -> Result<Pool> {
        let servers: Vec<String> = if self.o.leader_only {
            vec![self.nodes[self.leader().await?].addr.to_string()]
        } else {
            self.nodes.iter().map(|n| n.addr.to_string()).collect()
        };
        Pool::connect(&servers, self.o.connections, self.token()).await
    }

    /// False (and notes, and the log tail on stderr) when a node exited by itself.
    fn all_alive(&mut self, phase: &str) -> bool {
        let mut alive = true;
        for i in 0..self.nodes.len() {
            if let Some(st) = self.nodes[i].exited() {
                alive = false;
                eprintln!(
                    "node {} exited ({st}) during {phase}; last log lines:\n{}",
                    self.ids[i],
                    self.nodes[i].log_last(80)
                );
                self.summary.push(format!(
                    "node {} EXITED ({st}) during {phase}; its last log lines are on stderr",
                    self.ids[i]
                ));
                self.verified = false;
            }
        }
        alive
    }

    /// Phase 1. Returns the row, the leader's applied index and the wall time at the end.
    async fn enqueue(&mut self, done: Arc<AtomicU64>) -> Result<(Report, u64, SystemTime)> {
        let pool = self.pool().await?;
        let mut enq = enqueue_batches_counted(
            &pool,
            "backlog/enqueue",
            &self.queue,
            self.jobs,
            self.p.batch,
            self.concurrency,
            self.p.payload(),
            done,
        )
        .await?;
        let at = SystemTime::now();
        eprintln!(
            "backlog: enqueued {} jobs in {:.1} s",
            enq.tally.jobs,
            secs(enq.elapsed)
        );
        let stats = queue_stats(&pool, &self.queue).await?;
        enq.verified = enq.tally.jobs == self.jobs && stats.ready == self.jobs;
        enq.notes.push(format!(
            "verify: {} accepted, ready {} (want {} each); payload {} B",
            enq.tally.jobs, stats.ready, self.jobs, self.p.payload_size
        ));
        let lead = self.leader().await?;
        let end_index = status(&self.nodes[lead].addr.to_string(), self.token())
            .await
            .map_or(0, |s| s.applied_index);
        let sampled = self.sampler.peaks(None, Some(at));
        let mut per_node = Vec::new();
        for i in 0..self.nodes.len() {
            let rss = probe::rss(self.nodes[i].pid());
            let peak = self.read_hwm(i).unwrap_or(0).max(sampled.rss[i]);
            let disk = dir_bytes(&self.nodes[i].data_dir());
            let disk_peak = sampled.disk[i].max(disk);
            enq.notes.push(format!(
                "node {}: at the end RSS {}, data dir {}; peak while enqueueing RSS {}, data dir {}",
                self.ids[i],
                size_opt(rss),
                size(disk),
                size(peak),
                size(disk_peak)
            ));
            per_node.push(
                json!({"node": self.ids[i], "rss_bytes": rss, "data_dir_bytes": disk,
                "peak_rss_bytes": peak, "peak_data_dir_bytes": disk_peak}),
            );
        }
        self.details.insert(
            "enqueue".into(),
            json!({"secs": secs(enq.elapsed), "jobs_per_s": enq.jobs_per_s(),
                "applied_index": end_index, "nodes": per_node}),
        );
        Ok((enq, end_index, at))
    }

    /// Phase 2: each node's first snapshot at or past `end_index`. False when a node died.
    async fn snapshot(&mut self, end_index: u64, enqueued_at: SystemTime) -> Result<bool> {
        let reset: Vec<bool> = self
            .nodes
            .iter()
            .map(|n| probe::reset_peak(n.pid()))
            .collect();
        let deadline = Instant::now() + self.o.phase_timeout;
        let mut found: Vec<Option<nodelog::Build>> = vec![None; self.nodes.len()];
        while found.iter().any(Option::is_none) && Instant::now() < deadline {
            if !self.all_alive("the wait for a snapshot") {
                return Ok(false);
            }
            for (i, node) in self.nodes.iter().enumerate() {
                if found[i].is_none() {
                    let events = nodelog::events(node.log_path(), 0);
                    found[i] = nodelog::builds(&events)
                        .into_iter()
                        .find(|b| b.index.is_some_and(|x| x >= end_index));
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut out = Vec::new();
        for (i, build) in found.into_iter().enumerate() {
            let id = self.ids[i];
            let peak = self.read_hwm(i);
            let Some(b) = build else {
                self.summary.push(format!(
                    "snapshot, node {id}: n/a, none covering index {end_index} within {:?} (nodes snapshot every --snapshot-every entries, or --snapshot-max-age after a write; no call triggers one)",
                    self.o.phase_timeout
                ));
                out.push(Value::Null);
                continue;
            };
            let after = b.built.duration_since(enqueued_at).unwrap_or_default();
            let sampled = b
                .started
                .map(|s| self.sampler.peaks(Some(s), Some(b.built)).rss[i])
                .filter(|v| *v > 0);
            let memory = if reset[i] {
                format!(
                    "RSS peak from the end of enqueueing through the build {}",
                    size_opt(peak)
                )
            } else {
                format!(
                    "RSS peak since start {} (VmHWM could not be reset), sampled during the build {}",
                    size_opt(peak),
                    size_opt(sampled)
                )
            };
            self.summary.push(format!(
                "snapshot, node {id}: built {:.1} s after the end of enqueueing, build took {}, {} serialized (index {}); {memory}",
                secs(after),
                b.took().map_or("?".into(), |d| format!("{:.2} s", secs(d))),
                size_opt(b.bytes),
                b.index.unwrap_or(0),
            ));
            out.push(json!({"node": id, "built_after_enqueue_s": secs(after),
                "build_s": b.took().map(secs), "bytes": b.bytes, "index": b.index,
                "rss_peak_bytes": if reset[i] { peak } else { None },
                "sampled_rss_peak_bytes": sampled}));
        }
        self.details.insert("snapshot".into(), Value::Array(out));
        Ok(true)
    }

    /// The `backlog` row: whole-run peaks first, then the phases' notes.
    fn finish(mut self, elapsed: Duration) -> Report {
        let all = self.sampler.peaks(None, None);
        let mut peaks = Vec::new();
        for i in 0..self.nodes.len() {
            if self.nodes[i].exited().is_none() {
                self.read_hwm(i);
            }
            let rss = self.hwm[i].max(all.rss[i]);
            self.summary.insert(
                i,
                format!(
                    "node {}: peak RSS over the run {}, peak data dir {}",
                    self.ids[i],
                    size(rss),
                    size(all.disk[i])
                ),
            );
            peaks.push(json!({"node": self.ids[i], "peak_rss_bytes": rss,
                "peak_data_dir_bytes": all.disk[i]}));
        }
        let mut r = Report::new(
            "backlog",
            &self.queue,
            Tally::default(),
            elapsed,
            "(milestones in the notes)",
        );
        let mut details = Map::new();
        details.insert("nodes".into(), json!(self.nodes.len()));
        details.insert("jobs".into(), json!(self.jobs));
        details.insert("payload_size".into(), json!(self.p.payload_size));
        details.insert("batch".into(), json!(self.p.batch));
        details.insert("concurrency".into(), json!(self.concurrency));
        details.insert("peaks".into(), Value::Array(peaks));
        details.append(&mut self.details);
        r.notes = self.summary;
        r.verified = self.verified;
        r.details = Some(Value::Object(details));
        r
    }
}
