//! The worker registry: who has been leasing or polling, from which queues, holding
//! how much.
//!
//! It is replicated state (updated by `Lease` entries), so every node answers
//! `ListWorkers` the same way and the registry survives failover. A Lease call that
//! finds nothing to lease writes no entry, except to register a worker the registry
//! does not know (or knows on other queues) or to refresh one last seen more than
//! [`WORKER_REFRESH_MS`] ago: so a worker polling an empty queue is listed (holding
//! nothing) at the cost of one small write per worker and minute. A worker that has
//! not called for [`WORKER_FORGET_AFTER_MS`] and holds nothing is forgotten.

use serde::{Deserialize, Serialize};

use super::state::State;
use super::tables::TablesRead;

/// A worker unseen this long, with no job in hand, is dropped from the registry.
pub const WORKER_FORGET_AFTER_MS: u64 = 5 * 60 * 1000;

/// A polling worker's entry is refreshed when it is older than this.
pub const WORKER_REFRESH_MS: u64 = 60 * 1000;

/// What the broker knows of one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Queues of its latest lease call.
    pub queues: Vec<String>,
    /// Jobs it holds leases on now.
    pub jobs_in_hand: u64,
    /// Leader time of its latest lease call.
    pub last_seen_ms: u64,
    /// Jobs leased to it since it was first seen.
    pub leased_total: u64,
}

impl WorkerInfo {
    /// When the registry may drop this worker, if it holds nothing by then.
    pub fn forget_at_ms(&self) -> u64 {
        self.last_seen_ms.saturating_add(WORKER_FORGET_AFTER_MS)
    }
}

impl<T: TablesRead> State<T> {
    /// True when a Lease call from `worker_id` on `queues` that finds nothing to lease
    /// should still be written, to register or refresh the worker (see the module docs).
    pub fn worker_needs_refresh(&self, worker_id: &str, queues: &[String], now_ms: u64) -> bool {
        self.t.worker(worker_id).is_none_or(|w| {
            w.queues != queues || w.last_seen_ms.saturating_add(WORKER_REFRESH_MS) <= now_ms
        })
    }
}
