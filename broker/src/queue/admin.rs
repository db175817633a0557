//! Operator commands: cancel, retry, redrive, pause and resume.

use super::command::{CoreError, Outcome, Reply};
use super::job::JobState;
use super::state::State;
use super::stats::QueueStats;
use super::tables::Tables;
use super::transition::TransitionKind;

impl<T: Tables> State<T> {
    pub(crate) fn cancel(&mut self, job_id: &str) -> Reply {
        let mut job = self.find(job_id)?;
        if job.state.is_terminal() {
            return Err(CoreError::WrongState {
                job_id: job_id.to_string(),
                state: job.state,
                expected: "only scheduled, ready or leased jobs can be cancelled".into(),
            });
        }
        let lease_id = (job.state == JobState::Leased)
            .then(|| job.lease.as_ref().map(|l| l.id))
            .flatten();
        self.set_state(&mut job, JobState::Cancelled);
        self.report(&job, TransitionKind::Cancelled { lease_id });
        Ok(Outcome::Job(Box::new(self.detail(job))))
    }

    pub(crate) fn retry(&mut self, job_id: &str) -> Reply {
        let job = self.find(job_id)?;
        let seq = job.seq;
        if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
            return Err(CoreError::WrongState {
                job_id: job_id.to_string(),
                state: job.state,
                expected: "only dead or cancelled jobs can be retried".into(),
            });
        }
        self.revive(seq);
        Ok(Outcome::Job(Box::new(self.detail(self.record(seq)))))
    }

    /// Dead or cancelled -> Ready with fresh attempts.
    fn revive(&mut self, seq: u64) {
        let mut job = self.record(seq);
        job.attempt = 0;
        job.expirations = 0;
        job.run_at_ms = self.c.now_ms;
        job.progress = 0;
        job.progress_message.clear();
        job.lease = None;
        self.set_state(&mut job, JobState::Ready);
        self.report(&job, TransitionKind::Revived);
    }

    pub(crate) fn redrive(&mut self, queue: &str) -> u64 {
        let mut revived = 0;
        // Revived jobs leave the Dead index, so each page starts from the front again.
        loop {
            let page = self.t.dead_range(queue, None, 1024);
            if page.is_empty() {
                return revived;
            }
            for seq in page {
                self.revive(seq);
                revived += 1;
            }
        }
    }

    pub(crate) fn set_paused(&mut self, queue: &str, paused: bool) -> QueueStats {
        let mut q = self.t.queue(queue).unwrap_or_default();
        q.paused = paused;
        if q.is_empty() {
            self.t.delete_queue(queue);
        } else {
            self.t.put_queue(queue, &q);
        }
        self.queue_stats(queue).unwrap_or_else(|| QueueStats {
            queue: queue.to_string(),
            ..Default::default()
        })
    }
}
