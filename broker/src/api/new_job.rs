//! Turning an `EnqueueRequest` into the core's [`NewJob`]: validation, the defaults of
//! `taskraft serve`, trace context copied into headers, and the dedup key a
//! request id stands for.

use std::time::Duration;

use taskraft_proto::v1 as pb;

use super::validate::{self, MAX_HEADERS, MAX_HEADER_BYTES};
use super::ApiSettings;
use crate::error::BrokerError;
use crate::queue::{Due, NewJob};

/// How long an Enqueue's `request_id` dedups its retries: long enough for a client's
/// retries with backoff across a leader change, short enough that the records stay few
/// (SQS keeps a deduplication id 5 minutes too).
const REQUEST_ID_WINDOW: Duration = Duration::from_secs(300);

/// Validates one job. W3C trace context in the call's `metadata` is copied into the
/// job's headers (unless the caller set those keys itself), so the worker that
/// leases the job receives it and can continue the producer's trace.
pub(super) fn new_job(
    call: pb::EnqueueRequest,
    index: Option<usize>,
    metadata: &tonic::metadata::MetadataMap,
    settings: &ApiSettings,
    now_ms: u64,
) -> Result<NewJob, BrokerError> {
    let at = |e: BrokerError| match (index, e) {
        (Some(i), BrokerError::InvalidArgument { field, message }) => {
            BrokerError::InvalidArgument {
                field,
                message: format!("jobs[{i}]: {message}"),
            }
        }
        (_, e) => e,
    };
    validate::enqueue_request(&call, settings, now_ms).map_err(at)?;
    let mut headers: std::collections::BTreeMap<String, String> =
        call.headers.into_iter().collect();
    // Trace context rides along only while the headers stay within their limits.
    let mut header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    for (k, val) in crate::telemetry::trace_headers(metadata) {
        let add = k.len() + val.len();
        if headers.len() < MAX_HEADERS
            && header_bytes + add <= MAX_HEADER_BYTES
            && !headers.contains_key(k)
        {
            header_bytes += add;
            headers.insert(k.to_string(), val.to_string());
        }
    }
    Ok(NewJob {
        // Made at apply from the job's seq (`queue/job_id.rs`).
        id: String::new(),
        queue: call.queue,
        job_type: call.job_type,
        payload: call.payload,
        headers,
        priority: call.priority,
        due: if call.run_at_ms > 0 {
            Due::At(call.run_at_ms)
        } else {
            Due::After(call.delay_ms)
        },
        max_attempts: if call.max_attempts == 0 {
            settings.max_attempts
        } else {
            call.max_attempts
        },
        // A request id without a key dedups the call's retries for a short window,
        // through the same (queue, key) records as idempotency keys.
        dedup_window_ms: if call.idempotency_key.is_empty() && !call.request_id.is_empty() {
            REQUEST_ID_WINDOW.as_millis() as u64
        } else {
            settings.dedup_window.as_millis() as u64
        },
        idempotency_key: if call.idempotency_key.is_empty() && !call.request_id.is_empty() {
            format!("{}{}", validate::REQUEST_ID_PREFIX, call.request_id)
        } else {
            call.idempotency_key
        },
        retention: settings.retention,
        webhook_url: call.webhook_url,
    })
}
