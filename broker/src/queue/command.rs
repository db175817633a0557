//! What goes into the Raft log, and what applying it returns.
//!
//! Every command travels inside an [`Envelope`] that carries the proposing leader's
//! clock. The core never reads a clock itself, so applying the same log gives the same
//! state on every replica and in every test.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::job::{JobDetail, JobState, Retention};
use super::stats::QueueStats;

/// One log entry's application payload: a command stamped with the leader's time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Leader wall-clock Unix ms when it proposed the command. The core never lets its
    /// own clock run backwards, whatever this says.
    pub now_ms: u64,
    /// The command.
    pub cmd: Command,
}

/// A state change, decided by the leader and applied identically by every replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Adds jobs (one or a batch) under the ids their proposer chose: all land in the
    /// same entry, so a batch is all or nothing. The API now proposes
    /// [`Command::EnqueueNumbered`]; this stays for entries already in logs and for
    /// followers of the release before.
    Enqueue(Vec<NewJob>),
    /// Leases up to `max_jobs` ready jobs from `queues`, first queue first.
    Lease {
        /// Queues in the worker's priority order.
        queues: Vec<String>,
        /// Who is leasing.
        worker_id: String,
        /// At most this many jobs (already validated, >= 1).
        max_jobs: u32,
        /// Lease length (already resolved from the server default).
        visibility_timeout_ms: u64,
    },
    /// Completes a leased job.
    Ack {
        /// Job id.
        job_id: String,
        /// Fencing token from the lease.
        lease_id: u64,
        /// Result kept for the result TTL.
        result: Bytes,
    },
    /// Fails a leased job.
    Nack {
        /// Job id.
        job_id: String,
        /// Fencing token from the lease.
        lease_id: u64,
        /// Error text kept as `last_error`.
        error: String,
        /// Explicit delay before the retry; `None` means exponential backoff.
        retry_after_ms: Option<u64>,
        /// Dead-letter now.
        dead_letter: bool,
        /// Backoff policy in force on the proposing node.
        backoff: Backoff,
    },
    /// Extends a lease and records progress.
    Extend {
        /// Job id.
        job_id: String,
        /// Fencing token from the lease.
        lease_id: u64,
        /// New lease length from now.
        visibility_timeout_ms: u64,
        /// Progress 0-100, if reported.
        progress: Option<u32>,
        /// Progress text, if reported.
        progress_message: Option<String>,
    },
    /// Cancels a job that has not finished.
    Cancel {
        /// Job id.
        job_id: String,
    },
    /// Brings a dead or cancelled job back to ready with fresh attempts.
    Retry {
        /// Job id.
        job_id: String,
    },
    /// Retries every dead job of a queue.
    Redrive {
        /// Queue name.
        queue: String,
    },
    /// Stops serving leases from a queue.
    Pause {
        /// Queue name.
        queue: String,
    },
    /// Serves leases from a paused queue again.
    Resume {
        /// Queue name.
        queue: String,
    },
    /// The leader delivered webhook event `id`.
    WebhookDelivered {
        /// Event id.
        id: u64,
    },
    /// The leader failed to deliver webhook event `id`; retry later.
    WebhookFailed {
        /// Event id.
        id: u64,
        /// Why, for operators.
        error: String,
    },
    /// Several commands proposed together (group commit): applied in order, at the same
    /// leader time, each with its own reply. One log entry and one fsync for all.
    /// Never nested: decoding refuses a batch inside a batch (see [`flat_batch`]).
    #[serde(deserialize_with = "flat_batch")]
    Batch(Vec<Command>),
    /// Does nothing but advance time: due jobs become ready, expired leases are
    /// redelivered, finished jobs past their TTL are removed. The leader proposes it
    /// when something is due and no other traffic arrives.
    Tick,
    /// Gives back the jobs of a `Lease` whose caller had gone by the time it applied
    /// (the leader proposes it, `raft/proposer.rs`): each job still held under its lease
    /// goes back to ready, and the delivery does not count as an attempt (nobody got
    /// the job).
    Release {
        /// (job id, lease id) of each job handed out.
        leases: Vec<(String, u64)>,
    },
    /// [`Command::Enqueue`] whose jobs get their ids here, from the entry's time and
    /// each job's seq (`job_id.rs`; `NewJob::id` is empty): such an id finds its record
    /// without the id index, so an enqueue writes one B-tree entry less and an ack reads
    /// one less. What the API proposes; `Enqueue` stays for entries already in logs.
    /// Last in this enum: a variant's position is its code in the log.
    EnqueueNumbered(Vec<NewJob>),
}

impl Command {
    /// Rough encoded size, to bound how much one batched log entry carries.
    pub fn approx_size(&self) -> usize {
        match self {
            Command::Enqueue(jobs) | Command::EnqueueNumbered(jobs) => jobs
                .iter()
                .map(|j| {
                    128 + j.payload.len()
                        + j.headers
                            .iter()
                            .map(|(k, v)| k.len() + v.len())
                            .sum::<usize>()
                })
                .sum(),
            Command::Ack { result, .. } => 64 + result.len(),
            Command::Nack { error, .. } => 64 + error.len(),
            Command::Batch(cmds) => cmds.iter().map(Command::approx_size).sum(),
            _ => 64,
        }
    }
}

thread_local! {
    /// Batches being decoded on this thread (decoding is synchronous, so a thread-local
    /// depth is exact).
    static BATCH_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Decodes the commands of a [`Command::Batch`], refusing a batch inside it. Only the
/// proposer builds batches, from single commands, so a nested one can only come from a
/// hostile or broken peer; left unchecked, a deeply nested batch would overflow the
/// stack while decoding (or applying) it, on every node replaying the log.
fn flat_batch<'de, D>(d: D) -> Result<Vec<Command>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            BATCH_DEPTH.with(|c| c.set(c.get().saturating_sub(1)));
        }
    }
    if BATCH_DEPTH.with(|c| c.replace(c.get() + 1)) > 0 {
        BATCH_DEPTH.with(|c| c.set(c.get() - 1));
        return Err(serde::de::Error::custom(
            "a Command::Batch inside a Command::Batch is refused",
        ));
    }
    let _guard = Guard;
    Vec::<Command>::deserialize(d)
}

/// Exponential backoff policy, carried in `Nack` so replicas agree without sharing flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// First retry delay.
    pub base_ms: u64,
    /// Cap on any delay.
    pub max_ms: u64,
}

/// A job as proposed: the proposer has validated it and resolved every default.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewJob {
    /// Public id chosen by the proposer (`Enqueue`); empty in `EnqueueNumbered`, whose
    /// ids are made at apply.
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// Job type.
    pub job_type: String,
    /// Payload.
    pub payload: Bytes,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// Priority.
    pub priority: i32,
    /// When it becomes ready.
    pub due: Due,
    /// Allowed deliveries (>= 1).
    pub max_attempts: u32,
    /// Dedup key ("" for none).
    pub idempotency_key: String,
    /// How long the dedup key holds.
    pub dedup_window_ms: u64,
    /// Retention of the finished job.
    pub retention: Retention,
    /// Webhook target ("" for none).
    pub webhook_url: String,
}

/// When a new job becomes ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Due {
    /// This long after the leader's time in the entry.
    After(u64),
    /// At this Unix ms (in the past means now).
    At(u64),
}

/// Successful result of applying a command.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Outcome {
    /// One result per enqueued job, in order.
    Enqueued(Vec<Enqueued>),
    /// Jobs leased (possibly none).
    Leased(Vec<LeasedJob>),
    /// Job completed.
    Acked,
    /// Job failed: where it went.
    Nacked {
        /// Scheduled, Ready or Dead.
        state: JobState,
        /// When it runs again (0 when dead).
        run_at_ms: u64,
    },
    /// New lease deadline.
    Extended {
        /// Leader-clock Unix ms.
        deadline_ms: u64,
    },
    /// The job after a cancel or retry.
    Job(Box<JobDetail>),
    /// A queue after pause or resume.
    Queue(QueueStats),
    /// Jobs moved by a redrive.
    Redriven(u64),
    /// The entry applied and answers nothing more: a tick (which may have moved due
    /// jobs and expired leases), a webhook delivery report, a membership or blank entry.
    Done,
    /// One reply per command of a [`Command::Batch`], in order.
    Batch(Vec<Reply>),
    /// Jobs given back by a [`Command::Release`] (those still under their lease).
    Released(u64),
}

/// Result of one enqueue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The job's id (the first job's id for a duplicate).
    pub job_id: String,
    /// True when the idempotency key matched an earlier job and nothing was stored.
    pub duplicate: bool,
}

/// A job handed to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeasedJob {
    /// Job id.
    pub job_id: String,
    /// Fencing token.
    pub lease_id: u64,
    /// Queue.
    pub queue: String,
    /// Job type.
    pub job_type: String,
    /// Payload.
    pub payload: Bytes,
    /// Delivery number (1 first).
    pub attempt: u32,
    /// Allowed deliveries.
    pub max_attempts: u32,
    /// Lease deadline.
    pub deadline_ms: u64,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// Priority.
    pub priority: i32,
    /// When the job became due (enqueue or `run_at`, whichever is later), for the
    /// queue-wait metric.
    pub due_ms: u64,
    /// Lease expirations before this delivery, so that metrics can tell later that
    /// this lease ran out without reading the job again.
    pub expirations: u32,
}

/// A command that applied but could not do what it asked. Deterministic: every
/// replica returns the same error for the same entry, and the state is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CoreError {
    /// No job with that id (never existed, or removed by retention).
    #[error("job {0} not found")]
    JobNotFound(String),
    /// The lease id is not the job's current lease.
    #[error("lease {lease_id} is not the current lease of job {job_id} (it expired and the job was redelivered, or the job already finished: {state})")]
    StaleLease {
        /// Job id.
        job_id: String,
        /// The lease id presented.
        lease_id: String,
        /// The job's state now.
        state: JobState,
    },
    /// The job was cancelled while leased.
    #[error("job {0} was cancelled; stop working on it")]
    Cancelled(String),
    /// The command does not apply to a job in this state.
    #[error("job {job_id} is {state}; {expected}")]
    WrongState {
        /// Job id.
        job_id: String,
        /// The job's state now.
        state: JobState,
        /// What the command needs, in words.
        expected: String,
    },
}

/// What applying one entry returns.
pub type Reply = Result<Outcome, CoreError>;

/// Renders a lease id as it appears on the wire: 16 lower-case hex digits.
pub fn format_lease_id(id: u64) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    /// The postcard encoding of `depth` batches nested in each other around a `Tick`,
    /// built by hand: the encoder would overflow the stack on such a value too.
    fn nested(depth: usize) -> Vec<u8> {
        let batch = postcard::to_stdvec(&Command::Batch(vec![])).unwrap();
        let tick = postcard::to_stdvec(&Command::Tick).unwrap();
        let mut bytes = Vec::new();
        for _ in 0..depth {
            bytes.push(batch[0]); // variant index of Batch
            bytes.push(1); // one element
        }
        bytes.extend_from_slice(&tick);
        bytes
    }

    #[test]
    fn a_flat_batch_decodes() {
        let cmd = Command::Batch(vec![Command::Tick, Command::Cancel { job_id: "j".into() }]);
        let back: Command = postcard::from_bytes(&postcard::to_stdvec(&cmd).unwrap()).unwrap();
        assert!(matches!(back, Command::Batch(v) if v.len() == 2));
        assert!(postcard::from_bytes::<Command>(&nested(1)).is_ok());
    }

    #[test]
    fn a_nested_batch_is_refused_not_a_stack_overflow() {
        for depth in [2, 3, 1_000_000] {
            assert!(
                postcard::from_bytes::<Command>(&nested(depth)).is_err(),
                "depth {depth}"
            );
        }
        // The depth counter is back at zero after a refusal.
        assert!(postcard::from_bytes::<Command>(&nested(1)).is_ok());
    }
}
