//! Operator commands: cancel, retry, redrive, pause and resume.

use super::command::{CoreError, Outcome, Reply};
use super::job::JobState;
use super::state::State;
use super::stats::QueueStats;

impl State {
    pub(crate) fn cancel(&mut self, job_id: &str) -> Reply {
        let seq = self.seq_of(job_id)?;
        let job = &self.jobs[&seq];
        if job.state.is_terminal() {
            return Err(CoreError::WrongState {
                job_id: job_id.to_string(),
                state: job.state,
                expected: "only scheduled, ready or leased jobs can be cancelled".into(),
            });
        }
        self.set_state(seq, JobState::Cancelled);
        Ok(Outcome::Job(Box::new(self.jobs[&seq].clone())))
    }

    pub(crate) fn retry(&mut self, job_id: &str) -> Reply {
        let seq = self.seq_of(job_id)?;
        let job = &self.jobs[&seq];
        if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
            return Err(CoreError::WrongState {
                job_id: job_id.to_string(),
                state: job.state,
                expected: "only dead or cancelled jobs can be retried".into(),
            });
        }
        self.revive(seq);
        Ok(Outcome::Job(Box::new(self.jobs[&seq].clone())))
    }

    /// Dead or cancelled -> Ready with fresh attempts.
    fn revive(&mut self, seq: u64) {
        let now = self.now_ms;
        let job = self.jobs.get_mut(&seq).expect("known job");
        job.attempt = 0;
        job.expirations = 0;
        job.run_at_ms = now;
        job.progress = 0;
        job.progress_message.clear();
        self.set_state(seq, JobState::Ready);
    }

    pub(crate) fn redrive(&mut self, queue: &str) -> u64 {
        let Some(q) = self.queues.get(queue) else {
            return 0;
        };
        let dead: Vec<u64> = q.by_state[JobState::Dead.index()].iter().copied().collect();
        for &seq in &dead {
            self.revive(seq);
        }
        dead.len() as u64
    }

    pub(crate) fn set_paused(&mut self, queue: &str, paused: bool) -> QueueStats {
        let q = self.queues.entry(queue.to_string()).or_default();
        q.paused = paused;
        let stats = q.stats(queue);
        if !paused && stats == QueueStats::default_for(queue) {
            self.queues.remove(queue);
        }
        stats
    }
}

impl QueueStats {
    fn default_for(queue: &str) -> Self {
        QueueStats {
            queue: queue.to_string(),
            ..Default::default()
        }
    }
}
