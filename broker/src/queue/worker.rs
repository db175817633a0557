//! The worker registry: who has been leasing, from which queues, holding how much.
//!
//! It is replicated state (updated by `Lease` entries), so every node answers
//! `ListWorkers` the same way and the registry survives failover. A worker that has not
//! leased for [`WORKER_FORGET_AFTER_MS`] and holds nothing is forgotten.

use serde::{Deserialize, Serialize};

/// A worker unseen this long, with no job in hand, is dropped from the registry.
pub const WORKER_FORGET_AFTER_MS: u64 = 5 * 60 * 1000;

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
