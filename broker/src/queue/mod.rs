//! The queue core: a pure, deterministic state machine.
//!
//! No tokio, no tonic, no redb, no clock. Commands come in (with the leader's time
//! inside), outcomes and the job transitions they caused come out. The rules run over a
//! [`Tables`] trait: the node's redb store implements it (`storage/tables/`), and so
//! does [`MemTables`] for tests. The Raft state machine (`raft/state_machine/`) calls
//! [`State::apply_reporting`] for each committed entry; tests call it directly.
//!
//! Where to find a rule:
//! - `command.rs`: what is in the log and what applying it returns
//! - `job.rs`: a job and its states
//! - `job_id.rs`: ids made from the seq, so that they name their record
//! - `tables.rs`: the tables the rules read and write, and the in-memory reference
//! - `state.rs`: `apply`, the one place that moves a job between indexes, and reads
//! - `lease.rs`: lease, ack, nack, extend, lease expiry
//! - `retry.rs`: backoff delay after a nack
//! - `schedule.rs`: what time passing does
//! - `retention.rs`: removal of finished jobs and old dedup keys
//! - `admin.rs`: cancel, retry, redrive, pause, resume
//! - `transition.rs`: what an applied entry did to jobs, reported to observers; the
//!   webhook outbox is filled from it
//! - `outbox.rs`: the webhook outbox (events raised on success and death)
//! - `worker.rs`: the worker registry
//! - `stats.rs`: per-queue counts

pub mod admin;
pub mod command;
pub mod job;
pub mod job_id;
pub mod lease;
pub mod outbox;
pub mod retention;
pub mod retry;
pub mod schedule;
pub mod state;
pub mod stats;
pub mod tables;
pub mod transition;
pub mod worker;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

pub use command::{
    format_lease_id, Backoff, Command, CoreError, Due, Enqueued, Envelope, LeasedJob, NewJob,
    Outcome, Reply,
};
pub use job::{Job, JobDetail, JobState, Lease, Retention, INLINE_BLOB_MAX};
pub use lease::parse_lease_id;
pub use outbox::{WebhookEvent, WebhookKind};
pub use state::State;
pub use stats::QueueStats;
pub use tables::{
    merge_seqs, Counters, DedupEntry, Group, MemTables, QueueInfo, Tables, TablesRead, Timer,
};
pub use transition::{Transition, TransitionKind};
pub use worker::WorkerInfo;
