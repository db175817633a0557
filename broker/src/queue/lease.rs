//! Leasing and the three calls a lease holder makes: `Ack`, `Nack`, `ExtendLease`.
//!
//! A lease gives the job a fresh fencing token (`lease_id`) and a deadline; each
//! delivery counts one `attempt`. Holders prove themselves with the token, so a worker
//! whose lease ran out (and whose job went to someone else) cannot ack it.

use bytes::Bytes;

use super::command::{Backoff, CoreError, LeasedJob, Outcome, Reply};
use super::job::{Job, JobState, Lease, INLINE_BLOB_MAX};
use super::retry::backoff_delay_ms;
use super::state::{check_lease, State};
use super::tables::{Group, Tables};

use super::transition::TransitionKind;

impl<T: Tables> State<T> {
    pub(crate) fn lease(
        &mut self,
        queues: &[String],
        worker_id: &str,
        max_jobs: u32,
        visibility_timeout_ms: u64,
    ) -> Vec<LeasedJob> {
        let now = self.c.now_ms;
        let old = self.t.worker(worker_id);
        let mut worker = old.clone().unwrap_or_default();
        worker.queues = queues.to_vec();
        worker.last_seen_ms = now;
        self.save_worker(worker_id, old.as_ref(), &worker);

        let mut out = Vec::new();
        let mut seqs = Vec::new();
        let deadline_ms = now.saturating_add(visibility_timeout_ms);
        for name in queues {
            let want = (max_jobs as usize).saturating_sub(out.len());
            if want == 0 || self.t.queue(name).is_none_or(|q| q.paused) {
                continue;
            }
            // Leasing one job moves only that job, so the first `want` ready jobs can be
            // taken off the index at once.
            for seq in self.t.ready_take(name, want) {
                let lease_id = self.c.next_lease_id;
                self.c.next_lease_id += 1;
                seqs.push(seq);
                let mut job = self.record(seq);
                job.attempt += 1;
                job.progress = 0;
                job.progress_message.clear();
                // The Ready index keys on priority and seq, so the lease can be set
                // before the move; the registry count is raised by set_state.
                job.lease = Some(Lease {
                    id: lease_id,
                    deadline_ms,
                    worker_id: worker_id.to_string(),
                });
                self.set_state_taken(&mut job, JobState::Leased);
                let due_ms = job.created_at_ms.max(job.run_at_ms);
                self.report(
                    &job,
                    TransitionKind::Leased {
                        lease_id,
                        waited_ms: now.saturating_sub(due_ms),
                    },
                );
                out.push(LeasedJob {
                    payload: if self.reply_payloads {
                        self.payload_of(&job)
                    } else {
                        Bytes::new()
                    },
                    job_id: job.id,
                    lease_id,
                    queue: job.queue,
                    job_type: job.job_type,
                    attempt: job.attempt,
                    max_attempts: job.max_attempts,
                    deadline_ms,
                    headers: job.headers,
                    priority: job.priority,
                    due_ms,
                    expirations: job.expirations,
                });
            }
        }
        if let Some(first) = out.first() {
            self.t
                .group_insert(Group::Lease, deadline_ms, first.lease_id, &seqs);
            if let Some(old) = self.t.worker(worker_id) {
                let mut w = old.clone();
                w.leased_total += out.len() as u64;
                self.save_worker(worker_id, Some(&old), &w);
            }
        }
        out
    }

    /// The job a lease holder names, if the lease is its current one.
    fn held(&self, job_id: &str, lease_id: u64) -> Result<Job, CoreError> {
        let job = self.find(job_id)?;
        check_lease(&job, lease_id)?;
        Ok(job)
    }

    pub(crate) fn ack(&mut self, job_id: &str, lease_id: u64, result: &Bytes) -> Reply {
        let mut job = self.find(job_id)?;
        if job.state == JobState::Succeeded && job.ended_lease(lease_id) {
            // A retry of the ack that ended this lease (its answer was lost): the same
            // answer, and nothing changes (the first result stays).
            return Ok(Outcome::Acked);
        }
        check_lease(&job, lease_id)?;
        if result.len() <= INLINE_BLOB_MAX {
            if job.inline_result.is_none() {
                // A result of an earlier run may be in the table; the record's wins
                // from now on, so the table's must not outlive it.
                self.t.delete_result(job.seq);
            }
            job.inline_result = Some(result.clone());
        } else {
            self.t.put_result(job.seq, result);
            job.inline_result = None;
        }
        job.progress = 100;
        self.end_lease(&mut job, JobState::Succeeded);
        self.report(&job, TransitionKind::Acked { lease_id });
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
        let now = self.c.now_ms;
        let mut job = self.find(job_id)?;
        if matches!(
            job.state,
            JobState::Ready | JobState::Scheduled | JobState::Dead
        ) && job.ended_lease(lease_id)
        {
            // A retry of the nack that ended this lease: answered with where the job
            // is now (a Scheduled job may have become Ready since), nothing changes.
            return Ok(Outcome::Nacked {
                state: job.state,
                run_at_ms: if job.state == JobState::Dead {
                    0
                } else {
                    job.run_at_ms
                },
            });
        }
        check_lease(&job, lease_id)?;
        job.last_error = error.to_string();
        if dead_letter || job.attempt >= job.max_attempts {
            self.end_lease(&mut job, JobState::Dead);
            let to = JobState::Dead;
            self.report_ending(&job, TransitionKind::Nacked { lease_id, to }, to);
            return Ok(Outcome::Nacked {
                state: JobState::Dead,
                run_at_ms: 0,
            });
        }
        let delay =
            retry_after_ms.unwrap_or_else(|| backoff_delay_ms(backoff, job.attempt, job.seq));
        job.run_at_ms = now.saturating_add(delay);
        let run_at_ms = job.run_at_ms;
        let to = if delay == 0 {
            JobState::Ready
        } else {
            JobState::Scheduled
        };
        self.end_lease(&mut job, to);
        self.report(&job, TransitionKind::Nacked { lease_id, to });
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
        let now = self.c.now_ms;
        let mut job = self.held(job_id, lease_id)?;
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
        if deadline_ms != old {
            // The entry under the old deadline stays and finds the job extended.
            self.t
                .group_insert(Group::Lease, deadline_ms, lease_id, &[job.seq]);
        }
        self.t.put_job(&job);
        Ok(Outcome::Extended { deadline_ms })
    }

    /// Gives back jobs whose lease went to a caller that was gone: still held under
    /// that lease, a job returns to ready with the attempt undone. Any other (acked,
    /// expired and leased again) is left alone.
    pub(crate) fn release(&mut self, leases: &[(String, u64)]) -> Reply {
        let mut released = 0;
        for (job_id, lease_id) in leases {
            let Ok(mut job) = self.held(job_id, *lease_id) else {
                continue;
            };
            job.attempt = job.attempt.saturating_sub(1);
            self.set_state(&mut job, JobState::Ready);
            self.report(
                &job,
                TransitionKind::Released {
                    lease_id: *lease_id,
                },
            );
            released += 1;
        }
        Ok(Outcome::Released(released))
    }

    /// Expires the leases whose deadline has passed, reading at most `budget` jobs
    /// (whole deadline entries; their jobs may have been acked or extended since).
    pub(crate) fn expire_leases(&mut self, budget: usize) {
        let now = self.c.now_ms;
        self.drain_due(Group::Lease, budget, |s, job| {
            let due = job.held_lease().is_some_and(|l| l.deadline_ms <= now);
            if due {
                s.expire_lease(job);
            }
            due
        });
    }

    /// A lease ran out: the delivery counts as an attempt that ended by timeout.
    fn expire_lease(&mut self, mut job: Job) {
        let lease_id = job.lease.as_ref().map_or(0, |l| l.id);
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
            job.run_at_ms = self.c.now_ms;
        }
        self.set_state(&mut job, to);
        self.report_ending(&job, TransitionKind::Expired { lease_id, to }, to);
    }
}

/// Mapping used by the API for lease ids given as text.
pub fn parse_lease_id(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}
