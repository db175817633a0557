//! Per-queue counts. They are read off the per-state index sizes, so they cannot drift
//! from the jobs themselves.

use serde::{Deserialize, Serialize};

/// Counts of one queue, as `Admin.GetQueueStats` returns them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Leasable now (paused queues keep counting them here).
    pub ready: u64,
    /// Waiting for their due time.
    pub scheduled: u64,
    /// Held by workers.
    pub leased: u64,
    /// Completed and not yet expired.
    pub succeeded: u64,
    /// Dead and not yet expired.
    pub dead: u64,
    /// Cancelled and not yet expired.
    pub cancelled: u64,
    /// No leases are served while paused.
    pub paused: bool,
}
