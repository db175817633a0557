//! Errors: [`Error`] for every fallible SDK call, [`HandlerError`] for job handlers.
//!
//! [`Error`] splits what the caller can fix (bad input, unknown job, wrong token) from
//! what retrying later may fix ([`Error::Unavailable`], [`Error::Timeout`]); see
//! [`Error::is_retryable`]. Server answers are classified by gRPC code, and lease
//! calls also by the `taskraft-reason` metadata the broker attaches, so a cancelled
//! job is told apart from a lease that merely ran out.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};

/// Metadata key the broker sets on FAILED_PRECONDITION answers of lease calls.
pub(crate) const REASON_KEY: &str = "taskraft-reason";

/// An error from a [`Client`](crate::Client), [`Batcher`](crate::Batcher) or
/// [`Worker`](crate::Worker) call.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No node answered (connection refused, no leader, no quorum) before the retry
    /// deadline. Safe to retry later.
    #[error("cannot reach taskraft at {addrs}: {message} (is `taskraft serve` running?)")]
    Unavailable {
        /// The addresses that were tried.
        addrs: String,
        /// The last failure.
        message: String,
    },
    /// A call did not finish within its deadline.
    #[error("call timed out: {0}")]
    Timeout(String),
    /// The server refused the input; the message names the field and the limit.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The job (or queue) does not exist, or retention already removed it.
    #[error("not found: {0}")]
    NotFound(String),
    /// The job was cancelled while it was leased; its handler should stop.
    #[error("job cancelled: {0}")]
    Cancelled(String),
    /// The lease is no longer ours: it ran out and the job went to another worker, or
    /// the job already finished.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The job is in the wrong state for this call.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The token is missing or wrong (see [`ClientBuilder::token`](crate::ClientBuilder::token)).
    #[error("unauthenticated: {0} (set the token the broker was started with)")]
    Unauthenticated(String),
    /// Any other server answer.
    #[error("server error ({code:?}): {message}")]
    Server {
        /// The gRPC code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// An address given to the client is not `host:port` or a URL.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// A payload could not be encoded or decoded as JSON.
    #[error("json: {0}")]
    Json(#[source] Arc<serde_json::Error>),
    /// A configuration value is out of range (the message names it).
    #[error("configuration: {0}")]
    Config(String),
    /// The batcher (or worker) this handle belongs to has stopped.
    #[error("closed: {0}")]
    Closed(&'static str),
}

impl Error {
    /// True when retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout(_))
    }

    /// The gRPC code this error came from, if it came from the server.
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Error::Unavailable { .. } => Code::Unavailable,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::Cancelled(_) | Error::LeaseLost(_) | Error::FailedPrecondition(_) => {
                Code::FailedPrecondition
            }
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Server { code, .. } => *code,
            _ => return None,
        })
    }

    /// Classifies a server status. `Unavailable` is mapped by the client's retry loop,
    /// which knows the addresses it tried.
    pub(crate) fn from_status(s: Status) -> Self {
        let message = s.message().to_string();
        match s.code() {
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(message),
            Code::NotFound => Error::NotFound(message),
            Code::FailedPrecondition => {
                let reason = s
                    .metadata()
                    .get(REASON_KEY)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                match reason {
                    "cancelled" => Error::Cancelled(message),
                    "stale-lease" => Error::LeaseLost(message),
                    _ => Error::FailedPrecondition(message),
                }
            }
            Code::Unauthenticated | Code::PermissionDenied => Error::Unauthenticated(message),
            Code::DeadlineExceeded => Error::Timeout(message),
            code => Error::Server { code, message },
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(Arc::new(e))
    }
}

/// Why a handler failed. Any `std::error::Error` converts into it, so `?` works inside
/// handlers; the job is then retried with the broker's backoff.
///
/// [`HandlerError::permanent`] dead-letters the job at once instead, and
/// [`HandlerError::retry_after`] picks the retry delay.
#[derive(Debug, Clone)]
pub struct HandlerError {
    message: String,
    permanent: bool,
    retry_after: Option<Duration>,
}

impl HandlerError {
    /// A failure worth retrying (the broker's exponential backoff decides when).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
            retry_after: None,
        }
    }

    /// A failure no retry can fix: the job is dead-lettered now, whatever attempts remain.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            ..Self::new(message)
        }
    }

    /// Retries after `delay` instead of the broker's backoff (at least 1 ms).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay.max(Duration::from_millis(1)));
        self
    }

    /// The error text stored as the job's `last_error`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True for [`HandlerError::permanent`].
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The delay asked for with [`HandlerError::retry_after`].
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(e: E) -> Self {
        // Keep the whole chain: "decode order: missing field `id` at line 1".
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self::new(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelled_and_stale_leases_are_told_apart_by_reason_metadata() {
        let mut s = Status::failed_precondition("job x was cancelled");
        s.metadata_mut()
            .insert(REASON_KEY, "cancelled".parse().unwrap());
        assert!(matches!(Error::from_status(s), Error::Cancelled(_)));
        let mut s = Status::failed_precondition("not the current lease");
        s.metadata_mut()
            .insert(REASON_KEY, "stale-lease".parse().unwrap());
        assert!(matches!(Error::from_status(s), Error::LeaseLost(_)));
        let s = Status::failed_precondition("queue is paused");
        assert!(matches!(
            Error::from_status(s),
            Error::FailedPrecondition(_)
        ));
    }

    #[test]
    fn std_errors_convert_into_retryable_handler_errors() {
        let e: HandlerError = serde_json::from_str::<u32>("x").unwrap_err().into();
        assert!(!e.is_permanent());
        assert!(e.message().contains("expected"), "{}", e.message());
        let p = HandlerError::permanent("bad input").retry_after(Duration::ZERO);
        assert!(p.is_permanent());
        assert_eq!(p.retry_delay(), Some(Duration::from_millis(1)));
    }
}
