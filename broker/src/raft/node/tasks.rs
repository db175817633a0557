//! The node's background loops: the ticker (time passing without traffic) and the
//! snapshot trigger.

use super::*;

impl RaftNode {
    /// Proposes a `Tick` whenever something is due and this node leads, so that due
    /// jobs, expired leases and retention move without other traffic. While a tick
    /// leaves work due (each entry moves a bounded number of jobs), the next one follows
    /// at once instead of waiting for the period.
    pub async fn run_ticker(self: Arc<Self>, period: Duration) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            while self.is_leader() && self.tick_due() {
                let deadline = Instant::now() + self.request_timeout;
                if let Err(e) = self.propose_local(Command::Tick, deadline).await {
                    tracing::debug!(error = ?e, "tick not applied");
                    break;
                }
            }
        }
    }

    /// Takes a snapshot (and so purges the log behind it) after `every` entries, after
    /// [`SNAPSHOT_LOG_BYTES`] of appended log, or when entries came in and the last one
    /// is older than `max_age`. A snapshot is cheap (a durable commit of the state
    /// store), and it is what keeps the log file small after bursts of big entries.
    ///
    /// Not while this leader has a follower behind its last snapshot (for at most
    /// [`SNAPSHOT_HOLD_MAX`], so that a node that is down does not make the log grow
    /// forever): that follower is being sent the snapshot (a minute for 10M jobs) or the
    /// log right after it, and a new snapshot would purge that log, so after installing
    /// it would need yet another snapshot, and so on for as long as writes come in.
    pub async fn run_compactor(self: Arc<Self>, every: u64, max_age: Duration) {
        let mut last = Instant::now();
        let mut behind_since: Option<Instant> = None;
        let mut bytes_at_last = self.log.appended_bytes();
        let keep_entries = self.raft.config().max_in_snapshot_log_to_keep;
        let mut purged_to = 0;
        let mut interval = tokio::time::interval(
            (max_age / 4).clamp(Duration::from_millis(100), Duration::from_millis(500)),
        );
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let (applied, snap, follower_behind, least_matched) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                let snap = m.snapshot.map_or(0, |l| l.index);
                // On the leader: the lowest index every follower has.
                let least = m.replication.as_ref().map(|r| {
                    r.values()
                        .map(|matched| matched.map_or(0, |l| l.index))
                        .min()
                        .unwrap_or(u64::MAX)
                });
                let behind = least.is_some_and(|l| l < snap);
                (m.last_applied.map_or(0, |l| l.index), snap, behind, least)
            };
            // Purge what openraft's entry count keeps beyond `keep_log_bytes`, but on
            // the leader never past what a follower still needs from the log (it
            // would need a snapshot instead).
            if let Some(point) = self
                .log
                .purge_point(snap, keep_entries, self.keep_log_bytes)
            {
                let point = least_matched.map_or(point, |l| point.min(l));
                if point > purged_to {
                    purged_to = point;
                    if let Err(e) = self.raft.trigger().purge_log(point).await {
                        tracing::warn!(error = %e, "could not trigger a log purge");
                    }
                }
            }
            let held = match (follower_behind, behind_since) {
                (false, _) => {
                    behind_since = None;
                    false
                }
                (true, None) => {
                    behind_since = Some(Instant::now());
                    true
                }
                (true, Some(t)) => t.elapsed() < SNAPSHOT_HOLD_MAX,
            };
            let bytes = self.log.appended_bytes();
            let due = applied > snap
                && (applied - snap >= every
                    || last.elapsed() >= max_age
                    || bytes - bytes_at_last >= SNAPSHOT_LOG_BYTES);
            if due && !held {
                last = Instant::now();
                bytes_at_last = bytes;
                if let Err(e) = self.raft.trigger().snapshot().await {
                    tracing::warn!(error = %e, "could not trigger a snapshot");
                }
            } else if applied == snap {
                last = Instant::now();
                bytes_at_last = bytes;
            }
        }
    }

    fn tick_due(&self) -> bool {
        self.read_side
            .read()
            .state
            .next_wakeup_ms()
            .is_some_and(|t| t <= self.time.now_ms())
    }
}
