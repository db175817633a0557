//! The replicated queue state and `apply`, the one entry point that changes it.
//!
//! ```text
//!   Envelope{now_ms, cmd} ──► State::apply ──► advance time (schedule.rs, retention.rs)
//!                                          └─► the command (lease.rs, admin.rs, here)
//!                                          └─► Reply (Outcome or CoreError)
//! ```
//!
//! Every job lives in `jobs` and in exactly one per-queue state set; ready jobs are also in
//! the queue's priority index, scheduled jobs in `scheduled`, leased jobs in `leases`,
//! finished jobs in `expiring`. [`State::set_state`] is the only code that moves a job
//! between these, so the indexes cannot disagree with the job.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::command::{Command, CoreError, Enqueued, Envelope, NewJob, Outcome, Reply};
use super::job::{Job, JobState};
use super::stats::QueueStats;
use super::webhook::WebhookEvent;
use super::worker::WorkerInfo;

/// Upper bound on jobs moved by time (due, expired, removed) in one entry, so that a
/// million jobs falling due at once never make a single apply stall the log. What is
/// left is moved by the next entries (the leader keeps proposing ticks while work is due).
pub const MAX_TIME_MOVES_PER_ENTRY: usize = 10_000;

/// Priority-then-FIFO key of a ready job: lower sorts first.
pub(crate) type ReadyKey = (i64, u64);

/// One queue's indexes and settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    /// Paused queues serve no leases.
    pub paused: bool,
    /// Ready jobs in serving order: highest priority first, then enqueue order.
    pub(crate) ready: BTreeSet<ReadyKey>,
    /// Job seqs by state, indexed by [`JobState::index`].
    pub(crate) by_state: [BTreeSet<u64>; 6],
}

impl Queue {
    /// True when the queue holds no job and no setting, so it can be forgotten.
    fn is_empty(&self) -> bool {
        !self.paused && self.by_state.iter().all(BTreeSet::is_empty)
    }

    /// Counts of this queue.
    pub fn stats(&self, name: &str) -> QueueStats {
        let n = |s: JobState| self.by_state[s.index()].len() as u64;
        QueueStats {
            queue: name.to_string(),
            ready: n(JobState::Ready),
            scheduled: n(JobState::Scheduled),
            leased: n(JobState::Leased),
            succeeded: n(JobState::Succeeded),
            dead: n(JobState::Dead),
            cancelled: n(JobState::Cancelled),
            paused: self.paused,
        }
    }
}

/// Dedup record of an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DedupEntry {
    pub job_id: String,
    pub expires_at_ms: u64,
}

/// The whole replicated queue state. Serialised as is into snapshots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Leader time of the latest applied entry; never decreases.
    pub(crate) now_ms: u64,
    pub(crate) next_seq: u64,
    pub(crate) next_lease_id: u64,
    pub(crate) jobs: HashMap<u64, Job>,
    pub(crate) ids: HashMap<String, u64>,
    pub(crate) queues: BTreeMap<String, Queue>,
    /// (run_at_ms, seq) of scheduled jobs.
    pub(crate) scheduled: BTreeSet<(u64, u64)>,
    /// (deadline_ms, seq) of leased jobs.
    pub(crate) leases: BTreeSet<(u64, u64)>,
    /// (expires_at_ms, seq) of finished jobs.
    pub(crate) expiring: BTreeSet<(u64, u64)>,
    pub(crate) dedup: HashMap<(String, String), DedupEntry>,
    /// (expires_at_ms, queue, key) of dedup records.
    pub(crate) dedup_expiry: BTreeSet<(u64, String, String)>,
    pub(crate) workers: BTreeMap<String, WorkerInfo>,
    pub(crate) next_webhook_id: u64,
    /// Webhook events not yet delivered, by id.
    pub(crate) outbox: BTreeMap<u64, WebhookEvent>,
}

impl State {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one log entry. Deterministic: depends only on `self` and `env`.
    pub fn apply(&mut self, env: &Envelope) -> Reply {
        self.now_ms = self.now_ms.max(env.now_ms);
        self.advance();
        self.execute(&env.cmd)
    }

    fn execute(&mut self, cmd: &Command) -> Reply {
        match cmd {
            Command::Batch(cmds) => Ok(Outcome::Batch(
                cmds.iter().map(|c| self.execute(c)).collect(),
            )),
            Command::Enqueue(jobs) => Ok(Outcome::Enqueued(
                jobs.iter().map(|j| self.enqueue(j)).collect(),
            )),
            Command::Lease {
                queues,
                worker_id,
                max_jobs,
                visibility_timeout_ms,
            } => Ok(Outcome::Leased(self.lease(
                queues,
                worker_id,
                *max_jobs,
                *visibility_timeout_ms,
            ))),
            Command::Ack {
                job_id,
                lease_id,
                result,
            } => self.ack(job_id, *lease_id, result.clone()),
            Command::Nack {
                job_id,
                lease_id,
                error,
                retry_after_ms,
                dead_letter,
                backoff,
            } => self.nack(
                job_id,
                *lease_id,
                error,
                *retry_after_ms,
                *dead_letter,
                *backoff,
            ),
            Command::Extend {
                job_id,
                lease_id,
                visibility_timeout_ms,
                progress,
                progress_message,
            } => self.extend(
                job_id,
                *lease_id,
                *visibility_timeout_ms,
                *progress,
                progress_message.as_deref(),
            ),
            Command::Cancel { job_id } => self.cancel(job_id),
            Command::Retry { job_id } => self.retry(job_id),
            Command::Redrive { queue } => Ok(Outcome::Redriven(self.redrive(queue))),
            Command::Pause { queue } => Ok(Outcome::Queue(self.set_paused(queue, true))),
            Command::Resume { queue } => Ok(Outcome::Queue(self.set_paused(queue, false))),
            Command::Tick => Ok(Outcome::Ticked),
            Command::WebhookDelivered { id } => {
                self.webhook_delivered(*id);
                Ok(Outcome::Ticked)
            }
            Command::WebhookFailed { id, error } => {
                self.webhook_failed(*id, error);
                Ok(Outcome::Ticked)
            }
        }
    }

    /// Leader time of the last applied entry.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn enqueue(&mut self, new: &NewJob) -> Enqueued {
        if !new.idempotency_key.is_empty() {
            let key = (new.queue.clone(), new.idempotency_key.clone());
            if let Some(d) = self.dedup.get(&key) {
                return Enqueued {
                    job_id: d.job_id.clone(),
                    duplicate: true,
                };
            }
            let expires_at_ms = self.now_ms.saturating_add(new.dedup_window_ms);
            self.dedup_expiry
                .insert((expires_at_ms, key.0.clone(), key.1.clone()));
            self.dedup.insert(
                key,
                DedupEntry {
                    job_id: new.id.clone(),
                    expires_at_ms,
                },
            );
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let run_at_ms = match new.due {
            super::command::Due::After(d) => self.now_ms.saturating_add(d),
            super::command::Due::At(t) => t.max(self.now_ms),
        };
        let job = Job {
            seq,
            id: new.id.clone(),
            queue: new.queue.clone(),
            job_type: new.job_type.clone(),
            payload: new.payload.clone(),
            headers: new.headers.clone(),
            priority: new.priority,
            // Placeholder: set_state below files it properly.
            state: JobState::Scheduled,
            attempt: 0,
            max_attempts: new.max_attempts.max(1),
            expirations: 0,
            result: Default::default(),
            last_error: String::new(),
            created_at_ms: self.now_ms,
            run_at_ms,
            progress: 0,
            progress_message: String::new(),
            lease: None,
            finished_at_ms: 0,
            expires_at_ms: 0,
            retention: new.retention,
            idempotency_key: new.idempotency_key.clone(),
            webhook_url: new.webhook_url.clone(),
        };
        self.ids.insert(job.id.clone(), seq);
        self.jobs.insert(seq, job);
        let target = if run_at_ms > self.now_ms {
            JobState::Scheduled
        } else {
            JobState::Ready
        };
        self.file_new(seq, target);
        Enqueued {
            job_id: new.id.clone(),
            duplicate: false,
        }
    }

    /// Files a freshly inserted job into its first state's indexes.
    fn file_new(&mut self, seq: u64, state: JobState) {
        let job = self.jobs.get_mut(&seq).expect("job just inserted");
        job.state = state;
        let queue = self.queues.entry(job.queue.clone()).or_default();
        queue.by_state[state.index()].insert(seq);
        match state {
            JobState::Ready => {
                queue.ready.insert(ready_key(job));
            }
            JobState::Scheduled => {
                self.scheduled.insert((job.run_at_ms, seq));
            }
            _ => unreachable!("new jobs start ready or scheduled"),
        }
    }

    /// Moves a job to `to`, keeping every index in step. The caller has already
    /// updated the job's own fields that the target index keys on (`run_at_ms` for
    /// Scheduled, `lease` for Leased); terminal states get their finish and expiry times
    /// here.
    pub(crate) fn set_state(&mut self, seq: u64, to: JobState) {
        let now = self.now_ms;
        let job = self.jobs.get_mut(&seq).expect("set_state on a known job");
        let from = job.state;
        let queue = self
            .queues
            .get_mut(&job.queue)
            .expect("a job's queue exists");
        // Leave the old state's indexes.
        queue.by_state[from.index()].remove(&seq);
        match from {
            JobState::Ready => {
                queue.ready.remove(&ready_key(job));
            }
            JobState::Scheduled => {
                self.scheduled.remove(&(job.run_at_ms, seq));
            }
            JobState::Leased => {
                if let Some(lease) = job.lease.take() {
                    self.leases.remove(&(lease.deadline_ms, seq));
                    if let Some(w) = self.workers.get_mut(&lease.worker_id) {
                        w.jobs_in_hand = w.jobs_in_hand.saturating_sub(1);
                    }
                }
            }
            JobState::Succeeded | JobState::Dead | JobState::Cancelled => {
                self.expiring.remove(&(job.expires_at_ms, seq));
                job.finished_at_ms = 0;
                job.expires_at_ms = 0;
            }
        }
        // Enter the new one.
        job.state = to;
        queue.by_state[to.index()].insert(seq);
        match to {
            JobState::Ready => {
                queue.ready.insert(ready_key(job));
            }
            JobState::Scheduled => {
                self.scheduled.insert((job.run_at_ms, seq));
            }
            JobState::Leased => {
                let lease = job.lease.as_ref().expect("lease set before Leased");
                self.leases.insert((lease.deadline_ms, seq));
                if let Some(w) = self.workers.get_mut(&lease.worker_id) {
                    w.jobs_in_hand += 1;
                }
            }
            JobState::Succeeded | JobState::Dead | JobState::Cancelled => {
                let ttl = if to == JobState::Succeeded {
                    job.retention.result_ttl_ms
                } else {
                    job.retention.failure_ttl_ms
                };
                job.finished_at_ms = now;
                job.expires_at_ms = now.saturating_add(ttl);
                self.expiring.insert((job.expires_at_ms, seq));
                self.raise_webhook(seq, to);
            }
        }
    }

    /// Removes a finished job entirely (retention).
    pub(crate) fn remove(&mut self, seq: u64) {
        let Some(job) = self.jobs.remove(&seq) else {
            return;
        };
        debug_assert!(job.state.is_terminal());
        self.ids.remove(&job.id);
        self.expiring.remove(&(job.expires_at_ms, seq));
        if let Some(queue) = self.queues.get_mut(&job.queue) {
            queue.by_state[job.state.index()].remove(&seq);
            if queue.is_empty() {
                self.queues.remove(&job.queue);
            }
        }
    }

    pub(crate) fn seq_of(&self, job_id: &str) -> Result<u64, CoreError> {
        self.ids
            .get(job_id)
            .copied()
            .ok_or_else(|| CoreError::JobNotFound(job_id.to_string()))
    }

    // ---- reads (not commands; the API makes them linearizable before calling) ----

    /// One job by public id.
    pub fn job(&self, job_id: &str) -> Option<&Job> {
        self.ids.get(job_id).and_then(|s| self.jobs.get(s))
    }

    /// Counts of one queue, or `None` when the queue has no jobs and no settings.
    pub fn queue_stats(&self, queue: &str) -> Option<QueueStats> {
        self.queues.get(queue).map(|q| q.stats(queue))
    }

    /// Counts of every queue that has jobs or settings, by name.
    pub fn all_queue_stats(&self) -> Vec<QueueStats> {
        self.queues.iter().map(|(n, q)| q.stats(n)).collect()
    }

    /// True when any of `queues` has a job a `Lease` could take now.
    pub fn has_leasable(&self, queues: &[String]) -> bool {
        let now = self.now_ms;
        queues.iter().any(|name| {
            self.queues
                .get(name)
                .is_some_and(|q| !q.paused && !q.ready.is_empty())
        }) || self.scheduled.first().is_some_and(|&(t, _)| t <= now)
            || self.leases.first().is_some_and(|&(t, _)| t <= now)
    }

    /// Jobs of a queue (optionally of one state) in enqueue order, after seq `after`.
    /// Returns the page and the seq to continue after, if there is more.
    pub fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        after: Option<u64>,
        limit: usize,
    ) -> (Vec<&Job>, Option<u64>) {
        let Some(q) = self.queues.get(queue) else {
            return (Vec::new(), None);
        };
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut seqs: Vec<u64> = match state {
            Some(s) => q.by_state[s.index()]
                .range(start..)
                .take(limit + 1)
                .copied()
                .collect(),
            None => {
                let mut all: Vec<u64> = q
                    .by_state
                    .iter()
                    .flat_map(|set| set.range(start..).take(limit + 1).copied())
                    .collect();
                all.sort_unstable();
                all.truncate(limit + 1);
                all
            }
        };
        let more = seqs.len() > limit;
        seqs.truncate(limit);
        let next = if more { seqs.last().copied() } else { None };
        (seqs.iter().filter_map(|s| self.jobs.get(s)).collect(), next)
    }

    /// Workers seen through their leases, by id.
    pub fn workers(&self) -> impl Iterator<Item = (&String, &WorkerInfo)> {
        self.workers.iter()
    }

    /// The earliest time at which a `Tick` would change something, if any.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        [
            self.scheduled.first().map(|k| k.0),
            self.leases.first().map(|k| k.0),
            self.expiring.first().map(|k| k.0),
            self.dedup_expiry.first().map(|k| k.0),
            // Workers holding jobs are never forgotten, so they wake nothing.
            self.workers
                .values()
                .filter(|w| w.jobs_in_hand == 0)
                .map(|w| w.forget_at_ms())
                .min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Number of jobs held (every state).
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }
}

pub(crate) fn ready_key(job: &Job) -> ReadyKey {
    (-i64::from(job.priority), job.seq)
}

pub(crate) fn check_lease(
    jobs: &mut HashMap<u64, Job>,
    seq: u64,
    lease_id: u64,
) -> Result<&mut Job, CoreError> {
    let job = jobs.get_mut(&seq).expect("seq from ids");
    match (&job.lease, job.state) {
        (Some(l), JobState::Leased) if l.id == lease_id => Ok(job),
        (_, JobState::Cancelled) => Err(CoreError::Cancelled(job.id.clone())),
        _ => Err(CoreError::StaleLease {
            job_id: job.id.clone(),
            lease_id: super::command::format_lease_id(lease_id),
            state: job.state,
        }),
    }
}
