//! Observable gauges read when Prometheus scrapes: the applied state (queue depths,
//! workers) and the cluster view (term, indexes, leadership, clock skew, free disk).

use super::*;

pub(super) fn register_state_gauges(meter: &Meter, node: &Arc<RaftNode>) {
    let weak = Arc::downgrade(node);
    meter
        .u64_observable_gauge("taskraft_queue_jobs")
        .with_description("Jobs per queue and state in this node's applied state")
        .with_callback(move |o| {
            let Some(node) = weak.upgrade() else { return };
            let stats = node.view().state.all_queue_stats();
            for s in stats {
                let q = KeyValue::new("queue", s.queue.clone());
                for (state, n) in [
                    ("ready", s.ready),
                    ("scheduled", s.scheduled),
                    ("leased", s.leased),
                    ("dead", s.dead),
                    ("succeeded", s.succeeded),
                    ("cancelled", s.cancelled),
                ] {
                    o.observe(n, &[q.clone(), KeyValue::new("state", state)]);
                }
            }
        })
        .build();
    let weak = Arc::downgrade(node);
    meter
        .u64_observable_gauge("taskraft_queue_paused")
        .with_description("1 while a queue is paused")
        .with_callback(move |o| {
            let Some(node) = weak.upgrade() else { return };
            for s in node.view().state.all_queue_stats() {
                o.observe(u64::from(s.paused), &[KeyValue::new("queue", s.queue)]);
            }
        })
        .build();
    let weak = Arc::downgrade(node);
    meter
        .u64_observable_gauge("taskraft_workers")
        .with_description("Workers in the registry")
        .with_callback(move |o| {
            let Some(node) = weak.upgrade() else { return };
            o.observe(node.view().state.workers().len() as u64, &[]);
        })
        .build();
}

pub(super) fn register_raft_gauges(meter: &Meter, node: &Arc<RaftNode>) {
    type Read = fn(&RaftNode) -> u64;
    let gauges: [(&'static str, &'static str, Read); 7] = [
        ("taskraft_raft_term", "Current Raft term", |n| {
            n.cluster_view().term
        }),
        (
            "taskraft_raft_leader_id",
            "Leader as this node knows it (0: none)",
            |n| n.leader().unwrap_or(0),
        ),
        (
            "taskraft_raft_commit_index",
            "Commit index (the leader's view; a follower reports its applied index)",
            |n| n.cluster_view().commit_index,
        ),
        (
            "taskraft_raft_applied_index",
            "Last applied log index",
            |n| n.cluster_view().applied_index,
        ),
        (
            "taskraft_raft_apply_lag",
            "Committed entries not yet applied on this node",
            |n| {
                let s = n.cluster_view();
                s.commit_index.saturating_sub(s.applied_index)
            },
        ),
        (
            "taskraft_raft_snapshot_index",
            "Log index of the last snapshot (0: none)",
            |n| n.cluster_view().snapshot_index.unwrap_or(0),
        ),
        (
            "taskraft_raft_log_entries",
            "Entries in the Raft log (after the last purge)",
            |n| n.cluster_view().log_entries(),
        ),
    ];
    for (name, help, f) in gauges {
        let weak: Weak<RaftNode> = Arc::downgrade(node);
        meter
            .u64_observable_gauge(name)
            .with_description(help)
            .with_callback(move |o| {
                if let Some(n) = weak.upgrade() {
                    o.observe(f(&n), &[]);
                }
            })
            .build();
    }
    let weak: Weak<RaftNode> = Arc::downgrade(node);
    meter
        .f64_observable_gauge("taskraft_clock_skew_seconds")
        .with_description(
            "This node's wall clock minus its estimate of replicated time (positive: the wall \
             clock is ahead); the leader slews replicated time towards its wall clock at \
             0.05 %",
        )
        .with_callback(move |o| {
            if let Some(n) = weak.upgrade() {
                o.observe(n.clock_skew_ms() as f64 / 1000.0, &[]);
            }
        })
        .build();
    let weak: Weak<RaftNode> = Arc::downgrade(node);
    meter
        .u64_observable_gauge("taskraft_disk_free_bytes")
        .with_description(
            "Bytes free on the data dir's file system (enqueues are refused below --min-free-disk-mb)",
        )
        .with_callback(move |o| {
            if let Some(n) = weak.upgrade() {
                let free = n.disk().free_bytes();
                if free != u64::MAX {
                    o.observe(free, &[]);
                }
            }
        })
        .build();
    let weak: Weak<RaftNode> = Arc::downgrade(node);
    meter
        .u64_observable_gauge("taskraft_raft_is_leader")
        .with_description("1 on the leader")
        .with_callback(move |o| {
            if let Some(n) = weak.upgrade() {
                o.observe(u64::from(n.is_leader()), &[]);
            }
        })
        .build();
}
