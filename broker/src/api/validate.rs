//! Input validation. Every check names the field and the limit in its message.
//!
//! The public handlers check requests here before they build a command; the leader
//! checks a command a follower forwarded ([`forwarded`]) with the same limits, so a
//! peer cannot put into the log what the API would have refused.

use crate::error::BrokerError;
use crate::queue::{Command, Due, NewJob};
use crate::webhook::target::TargetPolicy;
use taskraft_proto::v1 as pb;

use super::ApiSettings;

/// Longest timeout a caller may ask for (visibility, long-poll wait).
pub const MAX_TIMEOUT_MS: u64 = 12 * 3600 * 1000;
/// Longest delay for a scheduled job.
pub const MAX_DELAY_MS: u64 = 366 * 24 * 3600 * 1000;
/// Most jobs one lease may return.
pub const MAX_LEASE_JOBS: u32 = 1000;
/// Most jobs in one batch.
pub const MAX_BATCH: usize = 10_000;
/// Most attempts a job may allow.
pub const MAX_ATTEMPTS: u32 = 1000;
/// Longest short text field (job type, worker id, idempotency key, header key).
pub const MAX_NAME: usize = 256;
/// Longest `request_id`: it becomes an idempotency key behind [`REQUEST_ID_PREFIX`],
/// within [`MAX_NAME`].
pub const MAX_REQUEST_ID: usize = 200;
/// Prefix of the idempotency key a request id becomes (`api/broker.rs`); client keys
/// may not start with it, so the two never collide.
pub const REQUEST_ID_PREFIX: &str = "request-id:";
/// Longest long text field (header value, error text, progress message).
pub const MAX_TEXT: usize = 64 * 1024;
/// Most headers per job.
pub const MAX_HEADERS: usize = 64;
/// Most ListJobs results per page.
pub const MAX_PAGE: u32 = 1000;
/// Most queues one Lease may name.
pub const MAX_LEASE_QUEUES: usize = 64;
/// Most bytes of one job's headers, keys and values together.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most bytes of one EnqueueBatch (payloads, headers and text fields of all its jobs).
/// The batch becomes one Raft entry, and openraft 0.9 gives an AppendEntries one
/// heartbeat to arrive (an append always carries at least one entry), so no entry may
/// be much bigger than the proposer's own batches (4 MiB): a bigger one might never
/// reach a follower over a slower link, and replication would stop behind it.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Largest `--max-payload`: one payload must fit an EnqueueBatch (see above).
pub const MAX_PAYLOAD_LIMIT: usize = MAX_BATCH_BYTES;
/// Longest webhook URL.
pub const MAX_URL: usize = 2048;

type R = Result<(), BrokerError>;

/// Queue names match `[A-Za-z0-9._:-]{1,128}`.
pub fn queue_name(field: &'static str, name: &str) -> R {
    if name.is_empty() {
        return Err(BrokerError::invalid(field, "queue name is empty"));
    }
    if name.len() > 128 {
        return Err(BrokerError::invalid(
            field,
            format!("queue name is {} bytes; at most 128", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(BrokerError::invalid(
            field,
            format!("queue name {name:?} has {c:?}; allowed: A-Z a-z 0-9 . _ : -"),
        ));
    }
    Ok(())
}

/// Job ids are what Enqueue returned: 1-64 characters of `[A-Za-z0-9-]`.
pub fn job_id(id: &str) -> R {
    if id.is_empty() {
        return Err(BrokerError::invalid("job_id", "job_id is empty"));
    }
    if id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(BrokerError::invalid(
            "job_id",
            format!("{id:?} is not a job id (ids are what Enqueue returned)"),
        ));
    }
    Ok(())
}

/// Lease ids are 16 hex digits, as Lease returned them.
pub fn lease_id(id: &str) -> Result<u64, BrokerError> {
    crate::queue::parse_lease_id(id).ok_or_else(|| {
        BrokerError::invalid(
            "lease_id",
            format!("{id:?} is not a lease id (16 hex digits, as Lease returned it)"),
        )
    })
}

/// A timeout in ms: 0 means `default`; more than 12 h is refused.
pub fn timeout_ms(field: &'static str, value: u64, default: u64) -> Result<u64, BrokerError> {
    if value > MAX_TIMEOUT_MS {
        return Err(BrokerError::invalid(
            field,
            format!("{value} ms is over the 12 h limit ({MAX_TIMEOUT_MS} ms)"),
        ));
    }
    Ok(if value == 0 { default } else { value })
}

/// A byte blob no larger than `max`.
pub fn blob(field: &'static str, len: usize, max: usize) -> R {
    if len > max {
        return Err(BrokerError::invalid(
            field,
            format!("{len} bytes is over the limit of {max} bytes (--max-payload)"),
        ));
    }
    Ok(())
}

/// A text field no longer than `max` bytes.
pub fn text(field: &'static str, value: &str, max: usize) -> R {
    if value.len() > max {
        return Err(BrokerError::invalid(
            field,
            format!("{} bytes is over the limit of {max} bytes", value.len()),
        ));
    }
    Ok(())
}

/// Webhook targets are http:// or https:// URLs. A host given as an IP address must be
/// one `targets` allows (names are checked when delivering, after resolution: see
/// `webhook/target.rs`).
pub fn webhook_url(url: &str, targets: &TargetPolicy) -> R {
    if url.is_empty() {
        return Ok(());
    }
    text("webhook_url", url, MAX_URL)?;
    let host = url
        .parse::<http::Uri>()
        .ok()
        .filter(|_| url.starts_with("http://") || url.starts_with("https://"))
        .and_then(|u| u.host().map(str::to_string));
    let Some(host) = host else {
        return Err(BrokerError::invalid(
            "webhook_url",
            format!("{url:?} is not an http:// or https:// URL"),
        ));
    };
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
        if let Some(kind) = targets.refusal(ip) {
            return Err(BrokerError::invalid(
                "webhook_url",
                format!("{ip} is a {kind} address; webhooks may not reach it unless --webhook-allow covers it"),
            ));
        }
    }
    Ok(())
}

/// Headers: at most [`MAX_HEADERS`] entries, keys of at most [`MAX_NAME`] bytes, and
/// [`MAX_HEADER_BYTES`] in all.
pub fn headers<'a>(h: impl ExactSizeIterator<Item = (&'a String, &'a String)>) -> R {
    if h.len() > MAX_HEADERS {
        return Err(BrokerError::invalid(
            "headers",
            format!("{} headers; at most {MAX_HEADERS}", h.len()),
        ));
    }
    let mut total = 0;
    for (k, val) in h {
        if k.is_empty() {
            return Err(BrokerError::invalid("headers", "a header key is empty"));
        }
        if k.len() > MAX_NAME {
            return Err(BrokerError::invalid(
                "headers",
                format!("key of {} bytes; at most {MAX_NAME}", k.len()),
            ));
        }
        total += k.len() + val.len();
    }
    if total > MAX_HEADER_BYTES {
        return Err(BrokerError::invalid(
            "headers",
            format!("{total} bytes of keys and values; at most {MAX_HEADER_BYTES}"),
        ));
    }
    Ok(())
}

/// A job's due time: `delay_ms` at most [`MAX_DELAY_MS`], `run_at_ms` at most that far
/// after `now_ms` (a job due in 3000 AD would never leave the store).
pub fn due(delay_ms: u64, run_at_ms: u64, now_ms: u64) -> R {
    if delay_ms > MAX_DELAY_MS {
        return Err(BrokerError::invalid(
            "delay_ms",
            format!("{delay_ms} ms is over the limit of {MAX_DELAY_MS} ms (366 days)"),
        ));
    }
    if delay_ms > 0 && run_at_ms > 0 {
        return Err(BrokerError::invalid(
            "run_at_ms",
            "set delay_ms or run_at_ms, not both",
        ));
    }
    let horizon = now_ms.saturating_add(MAX_DELAY_MS);
    if run_at_ms > horizon {
        return Err(BrokerError::invalid(
            "run_at_ms",
            format!("{run_at_ms} is more than 366 days ({MAX_DELAY_MS} ms) after now ({now_ms})"),
        ));
    }
    Ok(())
}

/// Max attempts a job may ask for.
pub fn max_attempts(n: u32) -> R {
    if n > MAX_ATTEMPTS {
        return Err(BrokerError::invalid(
            "max_attempts",
            format!("{n} is over the limit of {MAX_ATTEMPTS}"),
        ));
    }
    Ok(())
}

/// The bytes a job adds to an EnqueueBatch.
pub fn job_bytes<'a>(
    payload: usize,
    texts: &[&str],
    headers: impl Iterator<Item = (&'a String, &'a String)>,
) -> usize {
    payload
        + texts.iter().map(|t| t.len()).sum::<usize>()
        + headers.map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// The total of an EnqueueBatch, at most [`MAX_BATCH_BYTES`].
pub fn batch_bytes(total: usize) -> R {
    if total > MAX_BATCH_BYTES {
        return Err(BrokerError::invalid(
            "jobs",
            format!("the batch holds {total} bytes; at most {MAX_BATCH_BYTES} per EnqueueBatch"),
        ));
    }
    Ok(())
}

/// The queues of a Lease: 1 to [`MAX_LEASE_QUEUES`] valid names.
pub fn lease_queues(queues: &[String]) -> R {
    if queues.is_empty() {
        return Err(BrokerError::invalid("queues", "name at least one queue"));
    }
    if queues.len() > MAX_LEASE_QUEUES {
        return Err(BrokerError::invalid(
            "queues",
            format!(
                "{} queues; at most {MAX_LEASE_QUEUES} per Lease",
                queues.len()
            ),
        ));
    }
    for q in queues {
        queue_name("queues", q)?;
    }
    Ok(())
}

/// One job of an Enqueue or EnqueueBatch call (before ids and defaults are resolved).
pub fn enqueue_request(r: &pb::EnqueueRequest, settings: &ApiSettings, now_ms: u64) -> R {
    queue_name("queue", &r.queue)?;
    blob("payload", r.payload.len(), settings.max_payload)?;
    text("job_type", &r.job_type, MAX_NAME)?;
    text("idempotency_key", &r.idempotency_key, MAX_NAME)?;
    if r.idempotency_key.starts_with(REQUEST_ID_PREFIX) {
        return Err(BrokerError::invalid(
            "idempotency_key",
            format!("keys starting with {REQUEST_ID_PREFIX:?} are reserved for request ids"),
        ));
    }
    text("request_id", &r.request_id, MAX_REQUEST_ID)?;
    webhook_url(&r.webhook_url, &settings.webhook_targets)?;
    max_attempts(r.max_attempts)?;
    due(r.delay_ms, r.run_at_ms, now_ms)?;
    headers(r.headers.iter())?;
    for val in r.headers.values() {
        text("headers", val, MAX_TEXT)?;
    }
    Ok(())
}

/// A Lease call: its queues, worker id, batch size, visibility and wait.
pub fn lease_request(r: &pb::LeaseRequest) -> R {
    lease_queues(&r.queues)?;
    text("worker_id", &r.worker_id, MAX_NAME)?;
    if r.max_jobs > MAX_LEASE_JOBS {
        return Err(BrokerError::invalid(
            "max_jobs",
            format!("{} is over the limit of {MAX_LEASE_JOBS}", r.max_jobs),
        ));
    }
    timeout_ms("visibility_timeout_ms", r.visibility_timeout_ms, 1)?;
    timeout_ms("wait_ms", r.wait_ms, 0)?;
    Ok(())
}

/// A job as a follower forwarded it (defaults already resolved; the id too, unless
/// the leader makes it: `numbered`).
fn new_job(j: &NewJob, numbered: bool, settings: &ApiSettings, now_ms: u64) -> R {
    if !numbered {
        job_id(&j.id)?;
    } else if !j.id.is_empty() {
        return Err(BrokerError::invalid(
            "job_id",
            "a job whose id the leader makes carries none",
        ));
    }
    queue_name("queue", &j.queue)?;
    blob("payload", j.payload.len(), settings.max_payload)?;
    text("job_type", &j.job_type, MAX_NAME)?;
    text("idempotency_key", &j.idempotency_key, MAX_NAME)?;
    webhook_url(&j.webhook_url, &settings.webhook_targets)?;
    max_attempts(j.max_attempts)?;
    headers(j.headers.iter())?;
    match j.due {
        Due::After(ms) => due(ms, 0, now_ms),
        Due::At(ms) => due(0, ms, now_ms),
    }
}

/// Checks a command a follower forwarded to this leader with the API's limits. Only
/// commands the public API produces are accepted: batches, ticks and webhook outcomes
/// are the leader's own.
pub fn forwarded(cmd: &Command, settings: &ApiSettings, now_ms: u64) -> R {
    let max_payload = settings.max_payload;
    match cmd {
        Command::Enqueue(jobs) | Command::EnqueueNumbered(jobs) => {
            let numbered = matches!(cmd, Command::EnqueueNumbered(_));
            if jobs.is_empty() || jobs.len() > MAX_BATCH {
                return Err(BrokerError::invalid(
                    "jobs",
                    format!("{} jobs; 1 to {MAX_BATCH} per batch", jobs.len()),
                ));
            }
            let mut total = 0;
            for j in jobs {
                new_job(j, numbered, settings, now_ms)?;
                total += job_bytes(
                    j.payload.len(),
                    &[&j.job_type, &j.idempotency_key, &j.webhook_url],
                    j.headers.iter(),
                );
            }
            batch_bytes(total)
        }
        Command::Lease {
            queues,
            worker_id,
            max_jobs,
            visibility_timeout_ms,
        } => {
            lease_queues(queues)?;
            text("worker_id", worker_id, MAX_NAME)?;
            if *max_jobs == 0 || *max_jobs > MAX_LEASE_JOBS {
                return Err(BrokerError::invalid(
                    "max_jobs",
                    format!("{max_jobs}; 1 to {MAX_LEASE_JOBS}"),
                ));
            }
            positive_timeout("visibility_timeout_ms", *visibility_timeout_ms)
        }
        Command::Ack {
            job_id: id, result, ..
        } => {
            job_id(id)?;
            blob("result", result.len(), max_payload)
        }
        Command::Nack {
            job_id: id,
            error,
            retry_after_ms,
            ..
        } => {
            job_id(id)?;
            text("error", error, MAX_TEXT)?;
            due(retry_after_ms.unwrap_or(0), 0, now_ms).map_err(|_| {
                BrokerError::invalid(
                    "retry_after_ms",
                    format!("over the limit of {MAX_DELAY_MS} ms"),
                )
            })
        }
        Command::Extend {
            job_id: id,
            visibility_timeout_ms,
            progress,
            progress_message,
            ..
        } => {
            job_id(id)?;
            positive_timeout("visibility_timeout_ms", *visibility_timeout_ms)?;
            if progress.is_some_and(|p| p > 100) {
                return Err(BrokerError::invalid("progress", "over 100"));
            }
            text(
                "progress_message",
                progress_message.as_deref().unwrap_or(""),
                MAX_TEXT,
            )
        }
        Command::Cancel { job_id: id } | Command::Retry { job_id: id } => job_id(id),
        Command::Redrive { queue } | Command::Pause { queue } | Command::Resume { queue } => {
            queue_name("queue", queue)
        }
        Command::Batch(_)
        | Command::Tick
        | Command::Release { .. }
        | Command::WebhookDelivered { .. }
        | Command::WebhookFailed { .. } => Err(BrokerError::invalid(
            "command",
            "only the leader proposes batches, ticks, releases and webhook outcomes",
        )),
    }
}

fn positive_timeout(field: &'static str, ms: u64) -> R {
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        return Err(BrokerError::invalid(
            field,
            format!("{ms} ms; 1 to {MAX_TIMEOUT_MS} ms"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
