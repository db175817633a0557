//! What applying an entry did to jobs, reported by the core as it happens.
//!
//! Observers (metrics, the dashboard's rate history) used to infer transitions by
//! polling state snapshots: a lease that ran out was noticed seconds later by comparing
//! a job's expiration count. The core knows exactly what it moved while it moves it, so
//! it says so: [`State::apply_reporting`] returns every [`Transition`] an entry caused,
//! in order. The webhook outbox is filled from the same report, inside the core (it is
//! replicated state, so delivery survives failover).
//!
//! Every node applies every entry, so every node sees the whole cluster's transitions:
//! counters built on them are cluster-wide on each node, and a dashboard on any node
//! shows every queue's rates.

use super::job::{Job, JobState};
use super::state::State;
use super::tables::Tables;

/// One job's move, as applied at `at_ms` (the entry's replicated time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The job's queue.
    pub queue: String,
    /// Replicated time of the entry that caused it.
    pub at_ms: u64,
    /// What happened.
    pub kind: TransitionKind,
}

/// What happened to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitionKind {
    /// A new job was stored (an idempotent duplicate is not).
    Enqueued,
    /// A worker leased it; `waited_ms` is from its due time (enqueue or retry time).
    Leased {
        /// The new lease.
        lease_id: u64,
        /// Time from being due to this lease.
        waited_ms: u64,
    },
    /// Its lease holder acked it (a resent ack is not reported again).
    Acked {
        /// The lease that ended.
        lease_id: u64,
    },
    /// Its lease holder nacked it; `to` is Ready, Scheduled or Dead.
    Nacked {
        /// The lease that ended.
        lease_id: u64,
        /// Where the job went.
        to: JobState,
    },
    /// Its lease ran out; `to` is Ready, or Dead when attempts were used up.
    Expired {
        /// The lease that ran out.
        lease_id: u64,
        /// Where the job went.
        to: JobState,
    },
    /// Went dead, after a nack or an expired lease (reported after that transition).
    DeadLettered,
    /// A lease given up by a caller that was gone (`Release`): back to ready.
    Released {
        /// The lease that ended.
        lease_id: u64,
    },
    /// Cancelled by an operator, with the lease it ended if it was leased.
    Cancelled {
        /// The lease cancelled with it.
        lease_id: Option<u64>,
    },
    /// Revived from dead or cancelled by an operator (retry or redrive).
    Revived,
    /// Removed when its retention ran out.
    Removed,
}

impl TransitionKind {
    /// The lease this transition ended, if any.
    pub fn ended_lease(self) -> Option<u64> {
        match self {
            TransitionKind::Acked { lease_id }
            | TransitionKind::Nacked { lease_id, .. }
            | TransitionKind::Expired { lease_id, .. }
            | TransitionKind::Released { lease_id } => Some(lease_id),
            TransitionKind::Cancelled { lease_id } => lease_id,
            _ => None,
        }
    }
}

impl<T: Tables> State<T> {
    /// Reports that `job` just made transition `kind` (its record is already stored).
    /// The webhook outbox consumes the report here: success and death raise an event.
    pub(crate) fn report(&mut self, job: &Job, kind: TransitionKind) {
        match kind {
            TransitionKind::Acked { .. } => self.raise_webhook(job, JobState::Succeeded),
            TransitionKind::DeadLettered => self.raise_webhook(job, JobState::Dead),
            _ => {}
        }
        if let Some(out) = &mut self.transitions {
            out.push(Transition {
                queue: job.queue.clone(),
                at_ms: self.c.now_ms,
                kind,
            });
        }
    }

    /// Reports a move that ends in `to` and, when `to` is Dead, the dead-lettering
    /// that follows it.
    pub(crate) fn report_ending(&mut self, job: &Job, kind: TransitionKind, to: JobState) {
        self.report(job, kind);
        if to == JobState::Dead {
            self.report(job, TransitionKind::DeadLettered);
        }
    }
}
