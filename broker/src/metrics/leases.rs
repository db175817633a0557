//! Lease tracking for the job histograms: when each lease this node handed out began,
//! so that its ack or nack records the processing time, and a later expiry count shows
//! that it ran out.

use super::*;

/// Lease start times older than this are dropped (no lease lasts longer than 12 h).
const LEASE_FORGET: Duration = Duration::from_secs(13 * 3600);

/// A lease this node handed out and has not seen end yet.
pub(super) struct LeaseStart {
    pub(super) at: Instant,
    pub(super) queue: Arc<QueueCounters>,
    pub(super) job_id: String,
    /// The job's expiration count when leased: a higher count later means this lease
    /// ran out.
    pub(super) expirations: u32,
}

impl Metrics {
    /// Counts the jobs of one lease call and remembers when each lease started, with
    /// the job's expiration count (to tell later that the lease ran out). The wait
    /// histogram uses the due time the core reports with each leased job.
    pub fn leased(&self, jobs: &[crate::queue::LeasedJob]) {
        let Some(inner) = &self.inner else { return };
        let now_ms = inner.node.upgrade().map_or(0, |n| n.now_ms());
        let mut leases = lock(&inner.leases);
        for j in jobs {
            let Some(q) = self.queue(&j.queue) else {
                return;
            };
            q.leased.fetch_add(1, Ordering::Relaxed);
            let wait = now_ms.saturating_sub(j.due_ms) as f64 / 1000.0;
            inner.wait.record(wait, &q.attr);
            leases.insert(
                j.lease_id,
                LeaseStart {
                    at: Instant::now(),
                    queue: q,
                    job_id: j.job_id.clone(),
                    expirations: j.expirations,
                },
            );
        }
    }

    fn finish_lease(
        &self,
        lease_id: u64,
        queue: impl FnOnce() -> Option<String>,
    ) -> Option<Arc<QueueCounters>> {
        let inner = self.inner.as_ref()?;
        let started = lock(&inner.leases).remove(&lease_id);
        match started {
            Some(s) => {
                inner
                    .processing
                    .record(s.at.elapsed().as_secs_f64(), &s.queue.attr);
                Some(s.queue)
            }
            // Leased through another node (or before a restart): count without timing.
            None => queue().and_then(|q| self.queue(&q)),
        }
    }

    /// Counts an ack; `queue` is asked only when this node did not hand out the lease.
    /// Returns the queue name for the span.
    pub fn acked(
        &self,
        lease_id: u64,
        queue: impl FnOnce() -> Option<String>,
    ) -> Option<Arc<QueueCounters>> {
        let q = self.finish_lease(lease_id, queue)?;
        q.acked.fetch_add(1, Ordering::Relaxed);
        Some(q)
    }

    /// Counts a nack and whether it dead-lettered the job.
    pub fn nacked(
        &self,
        lease_id: u64,
        to: JobState,
        queue: impl FnOnce() -> Option<String>,
    ) -> Option<Arc<QueueCounters>> {
        let q = self.finish_lease(lease_id, queue)?;
        q.nacked.fetch_add(1, Ordering::Relaxed);
        if to == JobState::Dead {
            q.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        Some(q)
    }

    /// Counts the leases this node handed out that ended without an ack or nack through
    /// it: a raised expiration count means the lease ran out (the core decides expiry
    /// while applying; counting is done here, outside it).
    pub(super) fn count_ended_leases(&self) {
        let Some(inner) = &self.inner else { return };
        if let Some(node) = inner.node.upgrade() {
            let data = node.view();
            lock(&inner.leases).retain(|lease_id, s| {
                let Some(job) = data.state.job_record(&s.job_id) else {
                    return false;
                };
                if job.held_lease().is_some_and(|l| l.id == *lease_id) {
                    return s.at.elapsed() < LEASE_FORGET;
                }
                if job.expirations > s.expirations {
                    s.queue.expired.fetch_add(1, Ordering::Relaxed);
                    if job.state == JobState::Dead && job.attempt >= job.max_attempts {
                        s.queue.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                false
            });
        }
    }
}
