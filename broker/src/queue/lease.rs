//! Leasing and the three calls a lease holder makes: `Ack`, `Nack`, `ExtendLease`.
//!
//! A lease gives the job a fresh fencing token (`lease_id`) and a deadline; each
//! delivery counts one `attempt`. Holders prove themselves with the token, so a worker
//! whose lease ran out (and whose job went to someone else) cannot ack it.

use bytes::Bytes;

use super::command::{Backoff, LeasedJob, Outcome, Reply};
use super::job::{JobState, Lease};
use super::retry::backoff_delay_ms;
use super::state::{check_lease, State};

impl State {
    pub(crate) fn lease(
        &mut self,
        queues: &[String],
        worker_id: &str,
        max_jobs: u32,
        visibility_timeout_ms: u64,
    ) -> Vec<LeasedJob> {
        let now = self.now_ms;
        let worker = self.workers.entry(worker_id.to_string()).or_default();
        worker.queues = queues.to_vec();
        worker.last_seen_ms = now;

        let mut out = Vec::new();
        for name in queues {
            while out.len() < max_jobs as usize {
                let Some(q) = self.queues.get(name) else {
                    break;
                };
                if q.paused {
                    break;
                }
                let Some(&(_, seq)) = q.ready.first() else {
                    break;
                };
                let lease_id = self.next_lease_id;
                self.next_lease_id += 1;
                let deadline_ms = now.saturating_add(visibility_timeout_ms);
                let job = self.jobs.get_mut(&seq).expect("indexed job exists");
                job.attempt += 1;
                job.progress = 0;
                job.progress_message.clear();
                job.lease = Some(Lease {
                    id: lease_id,
                    deadline_ms,
                    worker_id: worker_id.to_string(),
                });
                // The registry count is raised by set_state; the lease above must be in place
                // first so that the leases index gets the right key.
                self.move_out_of_ready(seq);
                let job = &self.jobs[&seq];
                out.push(LeasedJob {
                    job_id: job.id.clone(),
                    lease_id,
                    queue: job.queue.clone(),
                    job_type: job.job_type.clone(),
                    payload: job.payload.clone(),
                    attempt: job.attempt,
                    max_attempts: job.max_attempts,
                    deadline_ms,
                    headers: job.headers.clone(),
                    priority: job.priority,
                });
            }
        }
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.leased_total += out.len() as u64;
        }
        out
    }

    /// Ready -> Leased for a job whose `lease` field is already set.
    fn move_out_of_ready(&mut self, seq: u64) {
        // set_state removes the Ready index entry using the job's fields (unchanged
        // priority/seq), then files it under its lease deadline.
        self.set_state(seq, JobState::Leased);
    }

    pub(crate) fn ack(&mut self, job_id: &str, lease_id: u64, result: Bytes) -> Reply {
        let seq = self.seq_of(job_id)?;
        let job = check_lease(&mut self.jobs, seq, lease_id)?;
        job.result = result;
        job.progress = 100;
        self.set_state(seq, JobState::Succeeded);
        Ok(Outcome::Acked)
    }

    pub(crate) fn nack(
        &mut self,
        job_id: &str,
        lease_id: u64,
        error: &str,
        retry_after_ms: Option<u64>,
        dead_letter: bool,
        backoff: Backoff,
    ) -> Reply {
        let seq = self.seq_of(job_id)?;
        let now = self.now_ms;
        let job = check_lease(&mut self.jobs, seq, lease_id)?;
        job.last_error = error.to_string();
        if dead_letter || job.attempt >= job.max_attempts {
            self.set_state(seq, JobState::Dead);
            return Ok(Outcome::Nacked {
                state: JobState::Dead,
                run_at_ms: 0,
            });
        }
        let delay = retry_after_ms.unwrap_or_else(|| backoff_delay_ms(backoff, job.attempt, seq));
        job.run_at_ms = now.saturating_add(delay);
        let run_at_ms = job.run_at_ms;
        let to = if delay == 0 {
            JobState::Ready
        } else {
            JobState::Scheduled
        };
        self.set_state(seq, to);
        Ok(Outcome::Nacked {
            state: to,
            run_at_ms,
        })
    }

    pub(crate) fn extend(
        &mut self,
        job_id: &str,
        lease_id: u64,
        visibility_timeout_ms: u64,
        progress: Option<u32>,
        progress_message: Option<&str>,
    ) -> Reply {
        let seq = self.seq_of(job_id)?;
        let now = self.now_ms;
        let job = check_lease(&mut self.jobs, seq, lease_id)?;
        if let Some(p) = progress {
            job.progress = p.min(100);
        }
        if let Some(m) = progress_message {
            job.progress_message = m.to_string();
        }
        let lease = job.lease.as_mut().expect("checked lease");
        let old = lease.deadline_ms;
        lease.deadline_ms = now.saturating_add(visibility_timeout_ms);
        let deadline_ms = lease.deadline_ms;
        self.leases.remove(&(old, seq));
        self.leases.insert((deadline_ms, seq));
        Ok(Outcome::Extended { deadline_ms })
    }

    /// A lease ran out: the delivery counts as an attempt that ended by timeout.
    pub(crate) fn expire_lease(&mut self, seq: u64) {
        let job = self.jobs.get_mut(&seq).expect("leased job exists");
        job.expirations += 1;
        job.last_error = format!(
            "lease expired on attempt {} (worker {} did not ack, nack or extend in time)",
            job.attempt,
            job.lease.as_ref().map_or("?", |l| l.worker_id.as_str())
        );
        let to = if job.attempt >= job.max_attempts {
            JobState::Dead
        } else {
            JobState::Ready
        };
        if to == JobState::Ready {
            job.run_at_ms = self.now_ms;
        }
        self.set_state(seq, to);
    }
}

/// Mapping used by the API for lease ids given as text.
pub fn parse_lease_id(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}
