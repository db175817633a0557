//! Phase 4: lease and ack `--drain` jobs at the backlog's depth with the lifecycle's
//! workers (`lifecycle::drain`), then the same number from a queue that holds only
//! those jobs, on the same node(s); the ratio of the two throughputs is the cost of depth.

use anyhow::Result;
use serde_json::json;

use super::{queue_stats, secs, Run};
use crate::report::Report;
use crate::scenario::{enqueue_batches, lifecycle};

impl Run<'_> {
    /// Phase 4a: lifecycle workers ack `--drain` jobs of the backlog. Returns the row,
    /// the jobs asked for and the depth (ready jobs) at the start.
    pub(super) async fn drain_deep(&mut self) -> Result<(Report, u64, u64)> {
        let pool = self.pool().await?;
        let before = queue_stats(&pool, &self.queue).await?;
        let want = self.o.drain.min(before.ready);
        let (workers, lease_batch) = (self.p.workers, self.p.lease_batch);
        let d = lifecycle::drain(&pool, &self.queue, workers, lease_batch, want).await?;
        let acked = d.acks.jobs;
        let lease_note = d.lease_note();
        let mut r = Report::new("backlog/drain", &self.queue, d.acks, d.elapsed, "Ack call");
        r.notes.insert(
            0,
            format!(
                "depth {} ready at the start; {workers} workers, lease batch {lease_batch}; {lease_note}",
                before.ready
            ),
        );
        let after = queue_stats(&pool, &self.queue).await?;
        r.verified = acked >= want
            && after.succeeded == before.succeeded + acked
            && after.leased == 0
            && after.ready + acked == before.ready;
        r.notes.push(format!(
            "verify: succeeded {} (want {}), leased {}, ready {} (want {})",
            after.succeeded,
            before.succeeded + acked,
            after.leased,
            after.ready,
            before.ready.saturating_sub(acked)
        ));
        Ok((r, want, before.ready))
    }

    /// Phase 4b: the same drain of `want` jobs from a queue holding only those.
    pub(super) async fn drain_empty(&mut self, want: u64) -> Result<Report> {
        let pool = self.pool().await?;
        let queue = format!("{}-baseline", self.queue);
        let pre = enqueue_batches(
            &pool,
            "backlog/baseline-preload",
            &queue,
            want,
            self.p.batch,
            self.concurrency,
            self.p.payload(),
        )
        .await?;
        let (workers, lease_batch) = (self.p.workers, self.p.lease_batch);
        let d = lifecycle::drain(&pool, &queue, workers, lease_batch, pre.tally.jobs).await?;
        let lease_note = d.lease_note();
        let mut r = Report::new("backlog/drain-empty", &queue, d.acks, d.elapsed, "Ack call");
        r.notes.insert(
            0,
            format!(
                "{} jobs enqueued into a new queue first ({:.2} s), same workers; {lease_note}",
                pre.tally.jobs,
                secs(pre.elapsed)
            ),
        );
        let st = queue_stats(&pool, &queue).await?;
        r.verified = pre.tally.errors == 0
            && st.succeeded == pre.tally.jobs
            && st.ready == 0
            && st.leased == 0;
        r.notes.push(format!(
            "verify: succeeded {} (want {}), ready {}, leased {}",
            st.succeeded, pre.tally.jobs, st.ready, st.leased
        ));
        Ok(r)
    }

    pub(super) fn compare_drains(&mut self, deep: &Report, empty: &Report, depth: u64) {
        let ratio = deep.jobs_per_s() / empty.jobs_per_s();
        self.summary.push(format!(
            "drain: {:.0} jobs/s at depth {depth}, {:.0} jobs/s from an empty queue: depth/empty {ratio:.2}",
            deep.jobs_per_s(),
            empty.jobs_per_s()
        ));
        self.details.insert(
            "drain".into(),
            json!({"jobs": deep.tally.jobs, "depth": depth, "jobs_per_s": deep.jobs_per_s(),
                "empty_jobs_per_s": empty.jobs_per_s(), "ratio": ratio}),
        );
    }
}
