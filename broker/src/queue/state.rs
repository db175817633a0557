//! The replicated queue state and `apply`, the one entry point that changes it.
//!
//! ```text
//!   Envelope{now_ms, cmd} ──► State::apply ──► advance time (schedule.rs, retention.rs)
//!                                          └─► the command (lease.rs, admin.rs, here)
//!                                          └─► Reply (Outcome or CoreError)
//! ```
//!
//! [`State`] is the queue seen through a set of [`Tables`]: the redb store on a node (one
//! write transaction per applied batch, `storage/tables.rs`), or [`MemTables`] in tests.
//! Every job has a record in `jobs` and is filed under exactly one state of its queue;
//! ready jobs are also in the queue's ready index, scheduled, leased and finished jobs
//! in a timer index. [`State::set_state`] is the only code that moves a job between
//! these, so the indexes cannot disagree with the job.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::command::{Command, CoreError, Enqueued, Envelope, NewJob, Outcome, Reply};
use super::job::{Job, JobDetail, JobState, INLINE_BLOB_MAX};
use super::job_id;
use super::stats::QueueStats;
use super::tables::{Counters, DedupEntry, Group, MemTables, QueueInfo, Tables, TablesRead, Timer};
use super::transition::{Transition, TransitionKind};
use super::worker::WorkerInfo;

/// Upper bound on jobs moved by time (due, expired, removed) in one entry, so that a
/// million jobs falling due at once never make a single apply stall the log. What is
/// left is moved by the next entries (the leader keeps proposing ticks while work is due).
pub const MAX_TIME_MOVES_PER_ENTRY: usize = 10_000;
/// Most jobs one listing page reads when filtering by a state other than Dead.
pub const LIST_SCAN_MAX: usize = 10_000;

/// The queue state over tables `T`.
#[derive(Clone, Debug, PartialEq)]
pub struct State<T> {
    pub(crate) t: T,
    /// Counters as of the command being applied; written back after each entry.
    pub(crate) c: Counters,
    /// Where [`Self::report`] puts transitions while [`Self::apply_reporting`] runs
    /// (`None` otherwise: plain [`Self::apply`] reports nothing).
    pub(crate) transitions: Option<Vec<Transition>>,
    /// Whether replies carry leased jobs' payloads (see [`Self::set_reply_payloads`]).
    pub(crate) reply_payloads: bool,
    /// Jobs that finished in the entry being applied, by expiry: filed as one
    /// [`Group::Expiring`] entry per expiry when the entry is done.
    pub(crate) finished: BTreeMap<u64, Vec<u64>>,
}

impl State<MemTables> {
    /// An empty state in memory.
    pub fn new() -> Self {
        Self::over(MemTables::default())
    }
}

impl Default for State<MemTables> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: TablesRead> State<T> {
    /// The state held by `tables`.
    pub fn over(tables: T) -> Self {
        let c = tables.counters();
        Self {
            t: tables,
            c,
            transitions: None,
            reply_payloads: true,
            finished: BTreeMap::new(),
        }
    }

    /// Leaves leased jobs' payloads out of `Lease` replies when `false`: a node applying
    /// an entry another node proposed drops its reply, so reading the payloads (one
    /// table read per job) would be wasted. Nothing else about the apply changes.
    pub fn set_reply_payloads(&mut self, on: bool) {
        self.reply_payloads = on;
    }

    /// The tables underneath.
    pub fn tables(&self) -> &T {
        &self.t
    }

    /// Gives the tables back.
    pub fn into_tables(self) -> T {
        self.t
    }

    /// Leader time of the last applied entry.
    pub fn now_ms(&self) -> u64 {
        self.c.now_ms
    }

    /// The record of the job `id` names.
    pub(crate) fn find(&self, id: &str) -> Result<Job, CoreError> {
        self.lookup(id)
            .ok_or_else(|| CoreError::JobNotFound(id.to_string()))
    }

    /// A numbered id ([`job_id`]) names its record by seq; any other id, or one that
    /// only looks numbered, goes through the id index.
    fn lookup(&self, id: &str) -> Option<Job> {
        if let Some(job) = job_id::seq_in(id).and_then(|seq| self.t.job(seq)) {
            if job.id == id {
                return Some(job);
            }
        }
        self.t.job(self.t.seq_of(id)?)
    }

    /// A job's record by seq; the caller got the seq from an index, so it exists.
    pub(crate) fn record(&self, seq: u64) -> Job {
        self.t.job(seq).expect("indexed job has a record")
    }

    pub(crate) fn detail(&self, job: Job) -> JobDetail {
        JobDetail {
            payload: self.payload_of(&job),
            result: self.result_of(&job),
            job,
        }
    }

    /// A job's payload, from its record when it is kept there.
    pub(crate) fn payload_of(&self, job: &Job) -> Bytes {
        match &job.inline_payload {
            Some(p) => p.clone(),
            None => self.t.payload(job.seq),
        }
    }

    /// A job's result, from its record when it is kept there.
    pub(crate) fn result_of(&self, job: &Job) -> Bytes {
        match &job.inline_result {
            Some(r) => r.clone(),
            None => self.t.result(job.seq),
        }
    }

    // ---- reads (not commands; the API makes them linearizable before calling) ----

    /// One job by public id, with payload and result.
    pub fn job(&self, job_id: &str) -> Option<JobDetail> {
        Some(self.detail(self.lookup(job_id)?))
    }

    /// One job's record by public id, without payload and result (cheaper than
    /// [`Self::job`] when only the state and counters matter).
    pub fn job_record(&self, job_id: &str) -> Option<Job> {
        self.lookup(job_id)
    }

    /// Counts of one queue, or `None` when the queue has no jobs and no settings.
    pub fn queue_stats(&self, queue: &str) -> Option<QueueStats> {
        self.t.queue(queue).map(|q| stats_of(queue, &q))
    }

    /// Counts of every queue that has jobs or settings, by name.
    pub fn all_queue_stats(&self) -> Vec<QueueStats> {
        self.t
            .queues()
            .iter()
            .map(|(n, q)| stats_of(n, q))
            .collect()
    }

    /// True when any of `queues` has a job a `Lease` could take now.
    pub fn has_leasable(&self, queues: &[String]) -> bool {
        let now = self.c.now_ms;
        queues.iter().any(|name| {
            self.t
                .queue(name)
                .is_some_and(|q| !q.paused && q.counts[JobState::Ready.index()] > 0)
        }) || self
            .t
            .timer_first(Timer::Scheduled)
            .is_some_and(|(t, _)| t <= now)
            || self.t.group_first(Group::Lease).is_some_and(|t| t <= now)
    }

    /// Jobs of a queue (optionally of one state) in enqueue order, after seq `after`.
    /// Returns the page and the seq to continue after, if there is more.
    ///
    /// Only dead jobs have an index of their own (the dead-letter listing and redrive);
    /// other states are found by reading the queue's jobs in order and keeping those in
    /// the state. That read stops after [`LIST_SCAN_MAX`] jobs, so a page can hold fewer
    /// than `limit` jobs (even none) and still name a place to continue: what SQS, DynamoDB
    /// and S3 listings do when a filter is applied to a long range.
    pub fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        after: Option<u64>,
        limit: usize,
    ) -> (Vec<JobDetail>, Option<u64>) {
        let mut jobs: Vec<Job> = Vec::new();
        if limit == 0 {
            return (Vec::new(), None);
        }
        if state == Some(JobState::Dead) || state.is_none() {
            let seqs = if state.is_some() {
                self.t.dead_range(queue, after, limit + 1)
            } else {
                self.t.listed_range(queue, after, limit + 1)
            };
            let more = seqs.len() > limit;
            for &seq in seqs.iter().take(limit) {
                if let Some(job) = self.t.job(seq) {
                    jobs.push(job);
                }
            }
            let next = if more {
                seqs.get(limit - 1).copied()
            } else {
                None
            };
            return (jobs.into_iter().map(|j| self.detail(j)).collect(), next);
        }
        let mut cursor = after;
        let mut scanned = 0;
        loop {
            let chunk = (limit + 1).clamp(64, 1024);
            let seqs = self.t.listed_range(queue, cursor, chunk);
            let exhausted = seqs.len() < chunk;
            for seq in seqs {
                let Some(job) = self.t.job(seq) else { continue };
                scanned += 1;
                if Some(job.state) == state {
                    if jobs.len() == limit {
                        // One more match exists: the page is full and continues after
                        // the last job it holds.
                        let next = jobs.last().map(|j| j.seq);
                        return (jobs.into_iter().map(|j| self.detail(j)).collect(), next);
                    }
                    jobs.push(job);
                }
                cursor = Some(seq);
                if scanned >= LIST_SCAN_MAX && !exhausted {
                    return (jobs.into_iter().map(|j| self.detail(j)).collect(), cursor);
                }
            }
            if exhausted {
                return (jobs.into_iter().map(|j| self.detail(j)).collect(), None);
            }
        }
    }

    /// Workers seen through their leases, by id.
    pub fn workers(&self) -> Vec<(String, WorkerInfo)> {
        self.t.workers()
    }

    /// The earliest time at which a `Tick` would change something, if any.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        [
            self.t.timer_first(Timer::Scheduled).map(|k| k.0),
            self.t.group_first(Group::Lease),
            self.t.group_first(Group::Expiring),
            self.t.dedup_expiry_first().map(|k| k.0),
            // Workers holding jobs are never forgotten, so they wake nothing.
            self.t.idle_worker_first().map(|k| k.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Number of jobs held (every state).
    pub fn job_count(&self) -> u64 {
        self.c.jobs
    }
}

impl<T: Tables> State<T> {
    /// Applies one log entry. Deterministic: depends only on the tables and `env`.
    pub fn apply(&mut self, env: &Envelope) -> Reply {
        self.c.now_ms = self.c.now_ms.max(env.now_ms);
        self.advance();
        let reply = self.execute(&env.cmd);
        for (at, seqs) in std::mem::take(&mut self.finished) {
            self.t.group_insert(Group::Expiring, at, seqs[0], &seqs);
        }
        self.t.set_counters(self.c);
        reply
    }

    /// [`Self::apply`], also appending to `out` every job transition the entry caused
    /// (time passing included), in the order they happened.
    pub fn apply_reporting(&mut self, env: &Envelope, out: &mut Vec<Transition>) -> Reply {
        self.transitions = Some(std::mem::take(out));
        let reply = self.apply(env);
        *out = self.transitions.take().unwrap_or_default();
        reply
    }

    fn execute(&mut self, cmd: &Command) -> Reply {
        match cmd {
            Command::Batch(cmds) => Ok(Outcome::Batch(
                cmds.iter().map(|c| self.execute(c)).collect(),
            )),
            Command::Enqueue(jobs) => Ok(Outcome::Enqueued(
                jobs.iter().map(|j| self.enqueue(j, false)).collect(),
            )),
            Command::EnqueueNumbered(jobs) => Ok(Outcome::Enqueued(
                jobs.iter().map(|j| self.enqueue(j, true)).collect(),
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
            } => self.ack(job_id, *lease_id, result),
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
            Command::Tick => Ok(Outcome::Done),
            Command::Release { leases } => self.release(leases),
            Command::WebhookDelivered { id } => {
                self.webhook_delivered(*id);
                Ok(Outcome::Done)
            }
            Command::WebhookFailed { id, error } => {
                self.webhook_failed(*id, error);
                Ok(Outcome::Done)
            }
        }
    }

    /// Adds one job; `numbered`: its id is made from its seq ([`Command::EnqueueNumbered`]).
    fn enqueue(&mut self, new: &NewJob, numbered: bool) -> Enqueued {
        let now = self.c.now_ms;
        if !new.idempotency_key.is_empty() {
            if let Some(d) = self.t.dedup(&new.queue, &new.idempotency_key) {
                return Enqueued {
                    job_id: d.job_id,
                    duplicate: true,
                };
            }
        }
        let seq = self.c.next_seq;
        let id = if numbered {
            job_id::numbered(now, seq)
        } else {
            new.id.clone()
        };
        if !new.idempotency_key.is_empty() {
            self.t.put_dedup(
                &new.queue,
                &new.idempotency_key,
                &DedupEntry {
                    job_id: id.clone(),
                    expires_at_ms: now.saturating_add(new.dedup_window_ms),
                },
            );
        }
        self.c.next_seq += 1;
        self.c.jobs += 1;
        let run_at_ms = match new.due {
            super::command::Due::After(d) => now.saturating_add(d),
            super::command::Due::At(t) => t.max(now),
        };
        let target = if run_at_ms > now {
            JobState::Scheduled
        } else {
            JobState::Ready
        };
        let mut job = Job {
            seq,
            id,
            queue: new.queue.clone(),
            job_type: new.job_type.clone(),
            headers: new.headers.clone(),
            priority: new.priority,
            state: target,
            attempt: 0,
            max_attempts: new.max_attempts.max(1),
            expirations: 0,
            last_error: String::new(),
            created_at_ms: now,
            run_at_ms,
            progress: 0,
            progress_message: String::new(),
            lease: None,
            finished_at_ms: 0,
            expires_at_ms: 0,
            retention: new.retention,
            idempotency_key: new.idempotency_key.clone(),
            webhook_url: new.webhook_url.clone(),
            inline_payload: None,
            inline_result: Some(Bytes::new()),
        };
        if new.payload.len() <= INLINE_BLOB_MAX {
            job.inline_payload = Some(new.payload.clone());
        } else {
            self.t.put_payload(seq, &new.payload);
        }
        if !numbered {
            self.t.put_id(&job.id, seq);
        }
        self.t.listed_insert(&job.queue, seq);
        self.file(&job);
        self.count(&job.queue, None, Some(target));
        self.t.put_job(&job);
        self.report(&job, TransitionKind::Enqueued);
        Enqueued {
            job_id: job.id,
            duplicate: false,
        }
    }

    /// Adds a job to the indexes of its current state.
    fn file(&mut self, job: &Job) {
        let seq = job.seq;
        match job.state {
            JobState::Ready => self.t.ready_insert(&job.queue, job.priority, seq),
            JobState::Scheduled => self.t.timer_insert(Timer::Scheduled, job.run_at_ms, seq),
            JobState::Leased => {
                // Its deadline entry is written by the lease call, one for all the jobs
                // it takes ([`Group::Lease`]).
                let lease = job.lease.as_ref().expect("lease set before Leased");
                self.worker_holds(&lease.worker_id, 1);
            }
            JobState::Succeeded | JobState::Dead | JobState::Cancelled => {
                if job.state == JobState::Dead {
                    self.t.dead_insert(&job.queue, seq);
                }
                // Filed at the end of the entry, with every job that finished in it
                // with the same expiry ([`Group::Expiring`]).
                self.finished
                    .entry(job.expires_at_ms)
                    .or_default()
                    .push(seq);
            }
        }
    }

    /// Removes a job from the indexes of its current state.
    fn unfile(&mut self, job: &Job) {
        let seq = job.seq;
        match job.state {
            JobState::Ready => self.t.ready_remove(&job.queue, job.priority, seq),
            JobState::Scheduled => self.t.timer_remove(Timer::Scheduled, job.run_at_ms, seq),
            JobState::Leased => {
                // Its deadline entry stays; it is checked against the record when due.
                if let Some(lease) = &job.lease {
                    self.worker_holds(&lease.worker_id, -1);
                }
            }
            JobState::Succeeded | JobState::Dead | JobState::Cancelled => {
                // Its expiry entry stays; it is checked against the record when due.
                if job.state == JobState::Dead {
                    self.t.dead_remove(&job.queue, seq);
                }
            }
        }
    }

    /// Moves a job's count in its queue from one state to another (or in or out).
    fn count(&mut self, queue: &str, from: Option<JobState>, to: Option<JobState>) {
        let mut q = self.t.queue(queue).unwrap_or_default();
        if let Some(f) = from {
            q.counts[f.index()] = q.counts[f.index()].saturating_sub(1);
        }
        if let Some(t) = to {
            q.counts[t.index()] += 1;
        }
        if q.is_empty() {
            self.t.delete_queue(queue);
        } else {
            self.t.put_queue(queue, &q);
        }
    }

    /// Moves a job to `to`, keeping every index in step, and stores its record. The
    /// caller has already updated the fields that the target index keys on (`run_at_ms`
    /// for Scheduled, `lease` for Leased) and left alone those the current one keys on;
    /// terminal states get their finish and expiry times here.
    pub(crate) fn set_state(&mut self, job: &mut Job, to: JobState) {
        self.move_job(job, to, false, true);
    }

    /// [`Self::set_state`] for a ready job the caller already took off the ready index
    /// ([`Tables::ready_take`]: a lease takes its jobs in one pass).
    pub(crate) fn set_state_taken(&mut self, job: &mut Job, to: JobState) {
        debug_assert_eq!(job.state, JobState::Ready);
        self.move_job(job, to, false, false);
    }

    /// [`Self::set_state`] for an ack or nack: the lease that ended stays in the record
    /// (see [`Job::lease`]), so that a retry of the same call can be answered alike.
    pub(crate) fn end_lease(&mut self, job: &mut Job, to: JobState) {
        self.move_job(job, to, true, true);
    }

    /// `filed`: the job is still in its current state's index (else the caller took it
    /// out).
    fn move_job(&mut self, job: &mut Job, to: JobState, keep_lease: bool, filed: bool) {
        let now = self.c.now_ms;
        let from = job.state;
        if filed {
            self.unfile(job);
        }
        if from.is_terminal() {
            job.finished_at_ms = 0;
            job.expires_at_ms = 0;
        }
        if from == JobState::Leased && to != JobState::Leased && !keep_lease {
            job.lease = None;
        }
        job.state = to;
        if to.is_terminal() {
            let ttl = if to == JobState::Succeeded {
                job.retention.result_ttl_ms
            } else {
                job.retention.failure_ttl_ms
            };
            job.finished_at_ms = now;
            job.expires_at_ms = now.saturating_add(ttl);
        }
        self.file(job);
        self.count(&job.queue, Some(from), Some(to));
        self.t.put_job(job);
    }

    /// Removes a finished job entirely (retention).
    pub(crate) fn remove(&mut self, job: Job) {
        let seq = job.seq;
        debug_assert!(job.state.is_terminal());
        self.unfile(&job);
        self.count(&job.queue, Some(job.state), None);
        if !job_id::names(&job.id, seq) {
            self.t.delete_id(&job.id);
        }
        self.t.listed_remove(&job.queue, seq);
        self.t.delete_job(&job);
        self.c.jobs = self.c.jobs.saturating_sub(1);
        self.report(&job, TransitionKind::Removed);
    }

    /// Changes a worker's count of jobs in hand.
    ///
    /// Runs for every job leased and settled, so it reads the record once and changes
    /// it in place (no second copy for the idle index's old key).
    fn worker_holds(&mut self, worker_id: &str, delta: i64) {
        let Some(mut w) = self.t.worker(worker_id) else {
            return;
        };
        let was_idle = w.jobs_in_hand == 0;
        w.jobs_in_hand = w.jobs_in_hand.saturating_add_signed(delta);
        let idle = w.jobs_in_hand == 0;
        if was_idle && !idle {
            self.t.idle_worker_remove(w.forget_at_ms(), worker_id);
        } else if idle && !was_idle {
            self.t.idle_worker_insert(w.forget_at_ms(), worker_id);
        }
        self.t.put_worker(worker_id, &w);
    }

    /// Stores a worker, keeping the idle index (workers holding nothing, by the time
    /// they may be forgotten) in step with its old and new record.
    pub(crate) fn save_worker(&mut self, id: &str, old: Option<&WorkerInfo>, new: &WorkerInfo) {
        if let Some(o) = old.filter(|o| o.jobs_in_hand == 0) {
            self.t.idle_worker_remove(o.forget_at_ms(), id);
        }
        if new.jobs_in_hand == 0 {
            self.t.idle_worker_insert(new.forget_at_ms(), id);
        }
        self.t.put_worker(id, new);
    }
}

/// Counts of a queue as the API reports them.
fn stats_of(name: &str, q: &QueueInfo) -> QueueStats {
    let n = |s: JobState| q.counts[s.index()];
    QueueStats {
        queue: name.to_string(),
        ready: n(JobState::Ready),
        scheduled: n(JobState::Scheduled),
        leased: n(JobState::Leased),
        succeeded: n(JobState::Succeeded),
        dead: n(JobState::Dead),
        cancelled: n(JobState::Cancelled),
        paused: q.paused,
    }
}

pub(crate) fn check_lease(job: &Job, lease_id: u64) -> Result<(), CoreError> {
    match (&job.lease, job.state) {
        (Some(l), JobState::Leased) if l.id == lease_id => Ok(()),
        (_, JobState::Cancelled) => Err(CoreError::Cancelled(job.id.clone())),
        _ => Err(CoreError::StaleLease {
            job_id: job.id.clone(),
            lease_id: super::command::format_lease_id(lease_id),
            state: job.state,
        }),
    }
}
