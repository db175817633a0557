//! What goes into an enqueue: [`EnqueueOptions`] (a builder of the optional fields),
//! [`NewJob`] (queue + payload + options, for batches) and [`Enqueued`] (the answer).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use taskraft_proto::v1 as pb;

use crate::Error;

/// Optional fields of an enqueue. Every field defaults to the broker's default.
///
/// ```
/// use std::time::Duration;
/// let opts = taskraft::EnqueueOptions::new()
///     .job_type("resize")
///     .priority(5)
///     .delay(Duration::from_secs(10))
///     .idempotency_key("order-42")
///     .header("trace", "abc");
/// ```
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    job_type: String,
    priority: i32,
    delay: Option<Duration>,
    run_at: Option<SystemTime>,
    max_attempts: u32,
    idempotency_key: String,
    headers: HashMap<String, String>,
    webhook_url: String,
    trace: Option<TraceContext>,
}

/// W3C trace context of the producer's span (see [`EnqueueOptions::trace_context`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl EnqueueOptions {
    /// All defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The name workers dispatch on ([`WorkerBuilder::handler`](crate::WorkerBuilder::handler)).
    pub fn job_type(mut self, job_type: impl Into<String>) -> Self {
        self.job_type = job_type.into();
        self
    }

    /// Higher runs first; equal priorities run in FIFO order.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Keeps the job scheduled this long before it can run. Replaces any `run_at`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self.run_at = None;
        self
    }

    /// Runs the job at (or after) this time. Replaces any `delay`.
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at = Some(at);
        self.delay = None;
        self
    }

    /// Deliveries allowed before the job is dead-lettered (0: the broker's default).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// A second enqueue with the same (queue, key) inside the broker's dedup window
    /// returns the first job's id and stores nothing.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = key.into();
        self
    }

    /// Adds a header that the worker sees on the job.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Sets every header at once.
    pub fn headers(mut self, headers: HashMap<String, String>) -> Self {
        self.headers = headers;
        self
    }

    /// The broker POSTs a signed event here when the job succeeds or dies.
    pub fn webhook_url(mut self, url: impl Into<String>) -> Self {
        self.webhook_url = url.into();
        self
    }

    /// Continues the producer's trace: a single enqueue sends `traceparent` (and
    /// `tracestate`) as W3C trace-context call metadata, so the broker's span joins the
    /// trace and the broker stores both in the job's headers, where the worker finds
    /// them ([`Job::header`](crate::Job::header)). In a batch, where metadata would be
    /// shared by every job, they go straight into each job's headers instead.
    pub fn trace_context(
        mut self,
        traceparent: impl Into<String>,
        tracestate: Option<String>,
    ) -> Self {
        self.trace = Some(TraceContext {
            traceparent: traceparent.into(),
            tracestate,
        });
        self
    }

    pub(crate) fn to_request(&self, queue: String, payload: Bytes) -> pb::EnqueueRequest {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        pb::EnqueueRequest {
            queue,
            payload,
            job_type: self.job_type.clone(),
            priority: self.priority,
            delay_ms: self.delay.map(ms).unwrap_or(0),
            max_attempts: self.max_attempts,
            idempotency_key: self.idempotency_key.clone(),
            headers: self.headers.clone(),
            // A time in the past means "now": 1 ms is the earliest the API can express.
            run_at_ms: self
                .run_at
                .map(|t| ms(t.duration_since(UNIX_EPOCH).unwrap_or_default()).max(1))
                .unwrap_or(0),
            webhook_url: self.webhook_url.clone(),
            // Fresh for each request built; the client's retries resend the same request,
            // so the broker stores the job once however many attempts reach it.
            request_id: format!("{:032x}", rand::random::<u128>()),
        }
    }
}

/// One job to enqueue: queue, payload and options. Used by
/// [`Client::enqueue_batch`](crate::Client::enqueue_batch) and the [`Batcher`](crate::Batcher).
#[derive(Debug, Clone)]
pub struct NewJob {
    queue: String,
    payload: Bytes,
    options: EnqueueOptions,
}

impl NewJob {
    /// A job with raw bytes as payload and default options.
    pub fn new(queue: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            queue: queue.into(),
            payload: payload.into(),
            options: EnqueueOptions::default(),
        }
    }

    /// A job whose payload is `value` encoded as JSON.
    pub fn json<T: Serialize + ?Sized>(queue: impl Into<String>, value: &T) -> Result<Self, Error> {
        Ok(Self::new(queue, serde_json::to_vec(value)?))
    }

    /// Replaces the options.
    pub fn options(mut self, options: EnqueueOptions) -> Self {
        self.options = options;
        self
    }

    /// The request for a batch: trace context goes into the job's headers (unless the
    /// caller set those keys).
    pub(crate) fn into_request(self) -> pb::EnqueueRequest {
        let mut req = self.options.to_request(self.queue, self.payload);
        if let Some(t) = self.options.trace {
            req.headers
                .entry("traceparent".into())
                .or_insert(t.traceparent);
            if let Some(state) = t.tracestate {
                req.headers.entry("tracestate".into()).or_insert(state);
            }
        }
        req
    }

    /// The request for a single enqueue and its trace context, sent as call metadata.
    pub(crate) fn into_request_and_trace(self) -> (pb::EnqueueRequest, Option<TraceContext>) {
        let req = self.options.to_request(self.queue, self.payload);
        (req, self.options.trace)
    }
}

/// The broker's answer to an enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id (of the first job when `duplicate`).
    pub job_id: String,
    /// True when the idempotency key matched an earlier job and nothing was stored.
    pub duplicate: bool,
}

impl From<pb::EnqueueResponse> for Enqueued {
    fn from(r: pb::EnqueueResponse) -> Self {
        Self {
            job_id: r.job_id,
            duplicate: r.duplicate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_and_run_at_replace_each_other() {
        let r = EnqueueOptions::new()
            .run_at(UNIX_EPOCH + Duration::from_secs(5))
            .delay(Duration::from_millis(250))
            .to_request("q".into(), Bytes::new());
        assert_eq!((r.delay_ms, r.run_at_ms), (250, 0));
        let r = EnqueueOptions::new()
            .delay(Duration::from_millis(250))
            .run_at(UNIX_EPOCH)
            .to_request("q".into(), Bytes::new());
        assert_eq!((r.delay_ms, r.run_at_ms), (0, 1));
    }

    #[test]
    fn trace_context_is_metadata_alone_and_headers_in_a_batch() {
        let opts = EnqueueOptions::new()
            .header("tracestate", "mine")
            .trace_context("00-abc-def-01", Some("theirs".into()));
        let (req, trace) = NewJob::new("q", "x")
            .options(opts.clone())
            .into_request_and_trace();
        assert!(!req.headers.contains_key("traceparent"));
        assert_eq!(
            trace.map(|t| t.traceparent).as_deref(),
            Some("00-abc-def-01")
        );
        let req = NewJob::new("q", "x").options(opts).into_request();
        assert_eq!(req.headers["traceparent"], "00-abc-def-01");
        assert_eq!(
            req.headers["tracestate"], "mine",
            "the caller's header wins"
        );
    }

    /// Every request built gets its own request id (what makes the client's retries of
    /// it safe); retries resend the built request, so they carry the same one.
    #[test]
    fn each_request_gets_its_own_request_id() {
        let job = NewJob::new("q", "p");
        let (a, b) = (job.clone().into_request(), job.into_request());
        assert_eq!(a.request_id.len(), 32);
        assert!(a.request_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.request_id, b.request_id);
    }
}
