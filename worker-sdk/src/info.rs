//! What the broker knows about a job ([`JobInfo`], [`JobState`]), as returned by
//! [`Client::get_job`](crate::Client::get_job) and friends.

use std::collections::HashMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use taskraft_proto::v1 as pb;

use crate::Error;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for its run time (delayed job or retry backoff).
    Scheduled,
    /// Can be leased now.
    Ready,
    /// Held by a worker.
    Leased,
    /// Finished; its result is stored.
    Succeeded,
    /// Attempts used up or dead-lettered.
    Dead,
    /// Cancelled before it finished.
    Cancelled,
    /// A state this SDK version does not know.
    Unknown,
}

impl JobState {
    /// True for states a job never leaves (until retention removes it).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }

    pub(crate) fn from_pb(v: i32) -> Self {
        match pb::JobState::try_from(v) {
            Ok(pb::JobState::Scheduled) => JobState::Scheduled,
            Ok(pb::JobState::Ready) => JobState::Ready,
            Ok(pb::JobState::Leased) => JobState::Leased,
            Ok(pb::JobState::Succeeded) => JobState::Succeeded,
            Ok(pb::JobState::Dead) => JobState::Dead,
            Ok(pb::JobState::Cancelled) => JobState::Cancelled,
            _ => JobState::Unknown,
        }
    }
}

/// A job as the broker stores it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobInfo {
    /// Id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// Dispatch name.
    pub job_type: String,
    /// State.
    pub state: JobState,
    /// Deliveries so far (1 on the first).
    pub attempt: u32,
    /// Deliveries allowed.
    pub max_attempts: u32,
    /// Priority.
    pub priority: i32,
    /// Payload.
    pub payload: Bytes,
    /// What the handler returned (succeeded jobs).
    pub result: Bytes,
    /// Text of the last failure.
    pub last_error: String,
    /// Last reported progress, 0-100.
    pub progress: u32,
    /// Last reported progress message.
    pub progress_message: String,
    /// Deliveries that ended because the lease ran out.
    pub expirations: u32,
    /// Headers.
    pub headers: HashMap<String, String>,
    /// Worker holding (or that last held) the lease.
    pub worker_id: String,
    /// Unix ms of the enqueue.
    pub created_at_ms: u64,
    /// Unix ms at which the job becomes (or became) ready.
    pub run_at_ms: u64,
    /// Unix ms of the finish (0 while live).
    pub finished_at_ms: u64,
}

impl JobInfo {
    /// Decodes the result as JSON.
    pub fn result_json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.result)?)
    }
}

impl From<pb::Job> for JobInfo {
    fn from(j: pb::Job) -> Self {
        Self {
            id: j.job_id,
            queue: j.queue,
            job_type: j.job_type,
            state: JobState::from_pb(j.state),
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            priority: j.priority,
            payload: j.payload,
            result: j.result,
            last_error: j.last_error,
            progress: j.progress,
            progress_message: j.progress_message,
            expirations: j.expirations,
            headers: j.headers,
            worker_id: j.worker_id,
            created_at_ms: j.created_at_ms,
            run_at_ms: j.run_at_ms,
            finished_at_ms: j.finished_at_ms,
        }
    }
}
