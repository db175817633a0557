//! What a handler sees: the [`Job`] context (payload, attempt, headers, progress
//! reporting, cancellation) and what it may return ([`JobOutput`], [`Json`]).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use taskraft_proto::v1 as pb;
use tokio::sync::watch;

use crate::HandlerError;

/// A leased job, handed to a handler.
///
/// While the handler runs the worker extends the lease in the background; progress
/// reported here travels with the next extension (sent at once, at most a few per
/// second).
#[derive(Debug)]
pub struct Job {
    leased: Arc<pb::LeasedJob>,
    progress: ProgressReporter,
    cancelled: watch::Receiver<bool>,
}

impl Job {
    pub(crate) fn new(
        leased: Arc<pb::LeasedJob>,
        progress: ProgressReporter,
        cancelled: watch::Receiver<bool>,
    ) -> Self {
        Self {
            leased,
            progress,
            cancelled,
        }
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.leased.job_id
    }

    /// The queue it came from.
    pub fn queue(&self) -> &str {
        &self.leased.queue
    }

    /// Its dispatch name.
    pub fn job_type(&self) -> &str {
        &self.leased.job_type
    }

    /// The raw payload.
    pub fn payload(&self) -> &Bytes {
        &self.leased.payload
    }

    /// The payload decoded as JSON. A payload that does not decode is a permanent
    /// error (retrying cannot fix it), so `job.json::<T>()?` dead-letters such a job.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.leased.payload).map_err(|e| {
            HandlerError::permanent(format!(
                "payload is not valid JSON for {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// This delivery's number: 1 on the first.
    pub fn attempt(&self) -> u32 {
        self.leased.attempt
    }

    /// Deliveries allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.leased.max_attempts
    }

    /// True when a failure now dead-letters the job.
    pub fn is_last_attempt(&self) -> bool {
        self.leased.attempt >= self.leased.max_attempts
    }

    /// The job's priority.
    pub fn priority(&self) -> i32 {
        self.leased.priority
    }

    /// Headers set at enqueue.
    pub fn headers(&self) -> &HashMap<String, String> {
        &self.leased.headers
    }

    /// One header.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.leased.headers.get(key).map(String::as_str)
    }

    /// Reports progress (0-100, clamped) with a short message; stored on the job.
    pub fn progress(&self, percent: u32, message: impl Into<String>) {
        self.progress.report(percent, message);
    }

    /// A handle for reporting progress from other tasks.
    pub fn progress_reporter(&self) -> ProgressReporter {
        self.progress.clone()
    }

    /// True once the broker said the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Resolves when the job is cancelled: for handlers that want to clean up before
    /// the worker aborts them.
    pub async fn cancelled(&self) {
        let mut rx = self.cancelled.clone();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Reports a job's progress; see [`Job::progress`].
#[derive(Debug, Clone)]
pub struct ProgressReporter {
    tx: Arc<watch::Sender<Option<(u32, String)>>>,
}

impl ProgressReporter {
    pub(crate) fn new() -> (Self, watch::Receiver<Option<(u32, String)>>) {
        let (tx, rx) = watch::channel(None);
        (Self { tx: Arc::new(tx) }, rx)
    }

    /// Reports progress (0-100, clamped) with a short message.
    pub fn report(&self, percent: u32, message: impl Into<String>) {
        self.tx
            .send_replace(Some((percent.min(100), message.into())));
    }
}

/// What a handler may return on success; stored as the job's result.
///
/// Implemented for `()`, [`Bytes`], `Vec<u8>`, `String`, `&'static str` and
/// [`Json`] (any `Serialize` value, stored as JSON).
pub trait JobOutput {
    /// The result bytes.
    fn into_result(self) -> Result<Bytes, HandlerError>;
}

impl JobOutput for () {
    fn into_result(self) -> Result<Bytes, HandlerError> {
        Ok(Bytes::new())
    }
}

impl JobOutput for Bytes {
    fn into_result(self) -> Result<Bytes, HandlerError> {
        Ok(self)
    }
}

impl JobOutput for Vec<u8> {
    fn into_result(self) -> Result<Bytes, HandlerError> {
        Ok(self.into())
    }
}

impl JobOutput for String {
    fn into_result(self) -> Result<Bytes, HandlerError> {
        Ok(self.into())
    }
}

impl JobOutput for &'static str {
    fn into_result(self) -> Result<Bytes, HandlerError> {
        Ok(Bytes::from_static(self.as_bytes()))
    }
}

/// Wraps a `Serialize` value so a handler can return it as a JSON result.
///
/// ```
/// # use taskraft::{Job, HandlerError, Json};
/// async fn handle(job: Job) -> Result<Json<serde_json::Value>, HandlerError> {
///     let n: u64 = job.json()?;
///     Ok(Json(serde_json::json!({ "double": n * 2 })))
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T: Serialize> JobOutput for Json<T> {
    fn into_result(self) -> Result<Bytes, HandlerError> {
        serde_json::to_vec(&self.0)
            .map(Bytes::from)
            .map_err(|e| HandlerError::permanent(format!("result does not encode as JSON: {e}")))
    }
}
