//! The one mapping from broker errors to gRPC status codes.
//!
//! A caller's mistake is never `INTERNAL`: bad input is `INVALID_ARGUMENT` naming the
//! field, an unknown job `NOT_FOUND`, a stale lease or wrong state `FAILED_PRECONDITION`,
//! and anything that retrying later can fix `UNAVAILABLE`.

use tonic::{Code, Status};

use crate::error::BrokerError;
use crate::queue::CoreError;

/// Metadata key that tells SDKs why a lease call failed without parsing the message.
pub const REASON_KEY: &str = "taskraft-reason";

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        let msg = e.to_string();
        let (code, reason) = match &e {
            BrokerError::InvalidArgument { .. } => (Code::InvalidArgument, None),
            BrokerError::NotFound(_) => (Code::NotFound, None),
            BrokerError::Core(CoreError::JobNotFound(_)) => (Code::NotFound, None),
            BrokerError::Core(CoreError::StaleLease { .. }) => {
                (Code::FailedPrecondition, Some("stale-lease"))
            }
            BrokerError::Core(CoreError::Cancelled(_)) => {
                (Code::FailedPrecondition, Some("cancelled"))
            }
            BrokerError::Core(CoreError::WrongState { .. }) => {
                (Code::FailedPrecondition, Some("wrong-state"))
            }
            BrokerError::FailedPrecondition(_) => (Code::FailedPrecondition, None),
            BrokerError::Unavailable(_) => (Code::Unavailable, None),
            BrokerError::ResourceExhausted(_) => (Code::ResourceExhausted, None),
            BrokerError::Unauthenticated(_) => (Code::Unauthenticated, None),
            BrokerError::PermissionDenied(_) => (Code::PermissionDenied, None),
            BrokerError::Internal(_) => (Code::Internal, None),
        };
        let mut status = Status::new(code, msg);
        if let Some(r) = reason {
            status
                .metadata_mut()
                .insert(REASON_KEY, tonic::metadata::MetadataValue::from_static(r));
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::JobState;

    #[test]
    fn caller_mistakes_never_map_to_internal() {
        let cases = [
            (
                BrokerError::invalid("queue", "empty"),
                Code::InvalidArgument,
            ),
            (CoreError::JobNotFound("x".into()).into(), Code::NotFound),
            (
                CoreError::StaleLease {
                    job_id: "x".into(),
                    lease_id: "y".into(),
                    state: JobState::Ready,
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                CoreError::Cancelled("x".into()).into(),
                Code::FailedPrecondition,
            ),
            (
                BrokerError::Unavailable("no leader".into()),
                Code::Unavailable,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
        let s = Status::from(BrokerError::Core(CoreError::Cancelled("j".into())));
        assert_eq!(s.metadata().get(REASON_KEY).unwrap(), "cancelled");
        assert!(s.message().contains("cancelled"));
    }
}
