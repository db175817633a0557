//! A job and its state: the unit the queue core moves between indexes.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Where a job is in its life. Every job is in exactly one state, and in exactly one
/// per-queue state index (see [`super::state::Queue`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for `run_at_ms` (delayed job or retry backoff).
    Scheduled,
    /// Leasable now.
    Ready,
    /// Held by a worker until its lease deadline.
    Leased,
    /// Acked; kept for the result TTL.
    Succeeded,
    /// Attempts used up or dead-lettered; kept for the failure TTL.
    Dead,
    /// Cancelled by an operator; kept for the failure TTL.
    Cancelled,
}

impl JobState {
    /// All states, in index order.
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Ready,
        JobState::Leased,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// Position in [`JobState::ALL`], used to index per-state sets.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Finished states: nothing but retention (or an operator's retry) moves the job again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }

    /// Lower-case name used in error messages and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Ready => "ready",
            JobState::Leased => "leased",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A worker's hold on a job. `id` is the fencing token: a later lease of the same job
/// gets a new id, so a late `Ack` from a worker whose lease ran out is recognised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Unique across the cluster (a replicated counter).
    pub id: u64,
    /// Leader-clock Unix ms after which the job is redelivered.
    pub deadline_ms: u64,
    /// Who holds it, for the worker registry and `GetJob`.
    pub worker_id: String,
}

/// How long a finished job is kept, fixed at enqueue so that every replica removes it
/// at the same log position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Kept this long after success.
    pub result_ttl_ms: u64,
    /// Kept this long after death or cancellation.
    pub failure_ttl_ms: u64,
}

/// Payloads and results up to this many bytes live inside the job's record
/// ([`Job::inline_payload`], [`Job::inline_result`]) rather than in tables of their own:
/// an enqueue then writes one B-tree entry fewer, a lease reads one fewer and a removal
/// deletes two fewer, at the price of rewriting those bytes with the record at each
/// move. Bigger blobs are written once to their own tables, so moving a job never
/// rewrites them.
pub const INLINE_BLOB_MAX: usize = 512;

/// A job's record: everything a replica needs to move it, and its payload and result
/// when they are small ([`INLINE_BLOB_MAX`]; bigger ones live in their own tables).
/// Reads that answer callers use [`JobDetail`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Internal order key: enqueue order across the cluster (FIFO within a priority).
    pub seq: u64,
    /// Public id (a UUIDv7 chosen by the node that proposed the enqueue).
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// What workers dispatch on.
    pub job_type: String,
    /// User headers (trace context travels here).
    pub headers: BTreeMap<String, String>,
    /// Higher first.
    pub priority: i32,
    /// Current state.
    pub state: JobState,
    /// Deliveries so far (1 on first delivery).
    pub attempt: u32,
    /// Deliveries allowed before the job dies.
    pub max_attempts: u32,
    /// Deliveries that ended because the lease ran out.
    pub expirations: u32,
    /// Error from the last `Nack` or expiry.
    pub last_error: String,
    /// When it was enqueued (leader clock).
    pub created_at_ms: u64,
    /// When it is (or was) due.
    pub run_at_ms: u64,
    /// Progress 0-100 from `ExtendLease`.
    pub progress: u32,
    /// Progress text from `ExtendLease`.
    pub progress_message: String,
    /// The current lease when `state == Leased`. After an ack or a nack it stays as the
    /// lease that ended so, until the job is leased again (or an operator revives it):
    /// a retried Ack or Nack of that lease (its answer was lost) then gets the same
    /// answer instead of a stale-lease error. Read [`Job::held_lease`] for "is leased".
    pub lease: Option<Lease>,
    /// When it reached a terminal state (0 while live).
    pub finished_at_ms: u64,
    /// When retention removes it (0 while live).
    pub expires_at_ms: u64,
    /// TTLs fixed at enqueue.
    pub retention: Retention,
    /// Dedup key, if any.
    pub idempotency_key: String,
    /// Where success/death events are POSTed, if anywhere.
    pub webhook_url: String,
    /// The payload, when it is kept in the record; `None`: in the payloads table (a
    /// big payload, or a record written before format 3). Not among the serialized
    /// fields: the disk store appends it after them (`storage/tables`), so records
    /// of format 2 still decode.
    #[serde(skip)]
    pub inline_payload: Option<Bytes>,
    /// The result, when it is kept in the record (empty until an ack); `None`: in the
    /// results table, if anywhere. Stored like [`Job::inline_payload`].
    #[serde(skip)]
    pub inline_result: Option<Bytes>,
}

impl Job {
    /// The lease the job is held under now, if it is leased.
    pub fn held_lease(&self) -> Option<&Lease> {
        self.lease
            .as_ref()
            .filter(|_| self.state == JobState::Leased)
    }

    /// The lease that ended with an ack or nack, while the job has not been leased again.
    pub(crate) fn ended_lease(&self, lease_id: u64) -> bool {
        self.state != JobState::Leased && self.lease.as_ref().is_some_and(|l| l.id == lease_id)
    }
}

/// A job with its payload and result, as reads and admin replies return it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    /// The record.
    pub job: Job,
    /// Opaque payload.
    pub payload: Bytes,
    /// Result from `Ack` (empty until then).
    pub result: Bytes,
}

impl std::ops::Deref for JobDetail {
    type Target = Job;
    fn deref(&self) -> &Job {
        &self.job
    }
}
