//! gRPC handlers of the public API. Each handler validates its input, turns the call
//! into a [`crate::queue::Command`] (or a linearizable read), hands it to
//! [`crate::raft::RaftNode`], and maps the result; `status.rs` maps every error.

pub mod admin;
pub mod auth;
pub mod backup;
pub mod broker;
pub mod convert;
pub mod enqueue_stream;
pub mod gate;
pub mod limits;
pub mod new_job;
pub mod status;
pub mod validate;
pub mod work_stream;

use std::sync::Arc;
use std::time::Duration;

use crate::webhook::target::TargetPolicy;

use crate::queue::{Backoff, Retention};

/// Limits and defaults the handlers apply (from `taskraft serve` flags).
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Largest payload or result, bytes.
    pub max_payload: usize,
    /// Lease length when the caller sends 0.
    pub visibility_timeout: Duration,
    /// Attempts when the caller sends 0.
    pub max_attempts: u32,
    /// Backoff after a Nack without retry_after_ms.
    pub backoff: Backoff,
    /// How long an idempotency key holds.
    pub dedup_window: Duration,
    /// Retention of finished jobs.
    pub retention: Retention,
    /// Which webhook targets are allowed.
    pub webhook_targets: Arc<TargetPolicy>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_payload: 1024 * 1024,
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 3,
            backoff: Backoff {
                base_ms: 1_000,
                max_ms: 3_600_000,
            },
            dedup_window: Duration::from_secs(24 * 3600),
            retention: Retention {
                result_ttl_ms: 24 * 3600 * 1000,
                failure_ttl_ms: 7 * 24 * 3600 * 1000,
            },
            webhook_targets: Arc::default(),
        }
    }
}
