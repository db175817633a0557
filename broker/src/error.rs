//! The broker's error type. Variants say who can fix the problem; `api/status.rs` is
//! the one place that turns them into gRPC status codes.

use crate::queue::CoreError;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The caller sent something malformed or out of range.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong and what the limit is.
        message: String,
    },
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The queue core refused the command (stale lease, wrong state, unknown job).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The call does not fit the cluster's current state (e.g. removing the last node).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No leader, no quorum, shutting down, or not yet a member: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// No credential, or one that is not configured.
    #[error("{0}")]
    Unauthenticated(String),
    /// The credential lacks the role or the queue the call needs.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller is over a rate or concurrency limit: back off and retry.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A fault of the broker itself (storage failure, encoding bug).
    #[error("{0}")]
    Internal(String),
}

impl BrokerError {
    /// Shorthand for an invalid-argument error.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        BrokerError::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}
