//! The free-space guard: enqueues stop before the disk is full, and resume by
//! themselves when space returns.
//!
//! A node that runs out of disk in the middle of a log append cannot go on: openraft
//! treats a failed append as fatal, and the node stops (and restarts cleanly from the
//! last durable entry once there is room). So the node refuses new jobs while the data
//! dir's file system has less than `--min-free-disk-mb` free, with UNAVAILABLE and a
//! message that says why, like RabbitMQ's disk alarm blocks publishers. Leases, acks
//! and nacks go on (they are small, and they are what drains the backlog and lets
//! retention free space); so do ticks and membership changes. The threshold leaves
//! room for them and for the log's growth until the next snapshot.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::BrokerError;

/// How often free space is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Watches the free space of one data dir.
pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    free: AtomicU64,
    low: AtomicBool,
}

impl DiskGuard {
    /// A guard for `dir` that refuses enqueues below `min_free` bytes free (0: never).
    pub fn new(dir: &Path, min_free: u64) -> Self {
        let g = Self {
            dir: dir.to_path_buf(),
            min_free,
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        };
        g.sample();
        g
    }

    /// Bytes free for this process on the data dir's file system, at the last sample.
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Reads the free space now and updates the alarm (logging when it changes).
    pub fn sample(&self) {
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read free disk space");
                return;
            }
        };
        self.free.store(free, Ordering::Relaxed);
        let low = self.min_free > 0 && free < self.min_free;
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(
                    dir = %self.dir.display(),
                    free_mib = free >> 20,
                    min_free_mib = self.min_free >> 20,
                    "disk nearly full: refusing enqueues until space returns"
                );
            } else {
                tracing::info!(
                    dir = %self.dir.display(),
                    free_mib = free >> 20,
                    "disk space is back: accepting enqueues again"
                );
            }
        }
    }

    /// UNAVAILABLE while the disk is nearly full.
    pub fn check_enqueue(&self) -> Result<(), BrokerError> {
        if !self.low.load(Ordering::Relaxed) {
            return Ok(());
        }
        Err(BrokerError::Unavailable(format!(
            "disk nearly full: {} MiB free for {} (below --min-free-disk-mb {}); enqueues are \
             refused until space returns, leases, acks and nacks still work",
            self.free_bytes() >> 20,
            self.dir.display(),
            self.min_free >> 20
        )))
    }

    /// Samples every [`SAMPLE_EVERY`] until the task is aborted.
    pub async fn run(self: std::sync::Arc<Self>) {
        let mut interval = tokio::time::interval(SAMPLE_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let me = self.clone();
            // statvfs is a blocking call (a hung network file system would hang it).
            let _ = tokio::task::spawn_blocking(move || me.sample()).await;
        }
    }
}
