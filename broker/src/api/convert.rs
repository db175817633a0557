//! Core types to protobuf types.

use taskraft_proto::v1 as pb;

use crate::queue::{self, format_lease_id, JobState};

/// Core state to wire state.
pub fn state_to_pb(s: JobState) -> pb::JobState {
    match s {
        JobState::Scheduled => pb::JobState::Scheduled,
        JobState::Ready => pb::JobState::Ready,
        JobState::Leased => pb::JobState::Leased,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Dead => pb::JobState::Dead,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

/// Wire state to core state (`None` for UNSPECIFIED or unknown values).
pub fn state_from_pb(v: i32) -> Option<JobState> {
    match pb::JobState::try_from(v).ok()? {
        pb::JobState::Unspecified => None,
        pb::JobState::Scheduled => Some(JobState::Scheduled),
        pb::JobState::Ready => Some(JobState::Ready),
        pb::JobState::Leased => Some(JobState::Leased),
        pb::JobState::Succeeded => Some(JobState::Succeeded),
        pb::JobState::Dead => Some(JobState::Dead),
        pb::JobState::Cancelled => Some(JobState::Cancelled),
    }
}

/// A job as `GetJob` returns it.
pub fn job_to_pb(d: &queue::JobDetail) -> pb::Job {
    let j = &d.job;
    pb::Job {
        job_id: j.id.clone(),
        queue: j.queue.clone(),
        job_type: j.job_type.clone(),
        state: state_to_pb(j.state) as i32,
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        priority: j.priority,
        payload: d.payload.clone(),
        result: d.result.clone(),
        last_error: j.last_error.clone(),
        created_at_ms: j.created_at_ms,
        run_at_ms: j.run_at_ms,
        progress: j.progress,
        progress_message: j.progress_message.clone(),
        expirations: j.expirations,
        headers: j.headers.clone().into_iter().collect(),
        lease_deadline_ms: j.held_lease().map_or(0, |l| l.deadline_ms),
        worker_id: j
            .held_lease()
            .map_or(String::new(), |l| l.worker_id.clone()),
        finished_at_ms: j.finished_at_ms,
        expires_at_ms: j.expires_at_ms,
        webhook_url: j.webhook_url.clone(),
    }
}

/// A leased job as `Lease` returns it.
pub fn leased_to_pb(l: queue::LeasedJob) -> pb::LeasedJob {
    pb::LeasedJob {
        job_id: l.job_id,
        lease_id: format_lease_id(l.lease_id),
        queue: l.queue,
        job_type: l.job_type,
        payload: l.payload,
        attempt: l.attempt,
        lease_deadline_ms: l.deadline_ms,
        headers: l.headers.into_iter().collect(),
        priority: l.priority,
        max_attempts: l.max_attempts,
    }
}

/// Queue counts as the Admin API returns them.
pub fn stats_to_pb(s: queue::QueueStats) -> pb::QueueStats {
    pb::QueueStats {
        queue: s.queue,
        ready: s.ready,
        scheduled: s.scheduled,
        leased: s.leased,
        succeeded: s.succeeded,
        dead: s.dead,
        cancelled: s.cancelled,
        paused: s.paused,
    }
}
