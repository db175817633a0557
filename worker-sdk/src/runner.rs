//! The life of one leased job inside a worker:
//!
//! ```text
//!  leased ──> wait for a run slot ──> spawn handler ──> Ok      ──> Ack
//!    │                                    │           Err     ──> Nack (dead_letter if permanent)
//!    │                                    │           panic   ──> Nack "handler panicked: .."
//!    └─ heartbeat: ExtendLease every visibility/3 (+ progress)
//!         ├─ FAILED_PRECONDITION reason=cancelled ──> abort handler, nothing to settle
//!         └─ lease lost (stale / not found)       ──> abort handler, nothing to settle
//!  shutdown: not started yet ──> Nack retry_after 1 ms; still running at the
//!            drain deadline   ──> abort, Nack retry_after 1 ms
//! ```
//!
//! The handler runs in its own task so a panic is caught as a `JoinError` and the
//! worker carries on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use taskraft_proto::v1 as pb;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::job::{Job, ProgressReporter};
use crate::session::Link;
use crate::{Client, Error, HandlerError};
use pb::work_request::Kind;

/// A type-erased handler.
pub(crate) type Handler =
    Arc<dyn Fn(Job) -> BoxFuture<'static, Result<Bytes, HandlerError>> + Send + Sync>;

/// Where the worker is in its life; only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Leasing and running.
    Running,
    /// Shutdown asked: no leasing, unstarted jobs go back, running jobs finish.
    Draining,
    /// The drain deadline passed: running handlers are aborted and their jobs go back.
    Abort,
}

/// Why a lease ended before the handler did.
#[derive(Debug, Clone)]
enum LeaseEnd {
    Cancelled,
    Lost(String),
}

/// Outcome counters, shared by every job of a worker.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub abandoned: AtomicU64,
}

/// What every job of one worker shares.
pub(crate) struct Shared {
    pub client: Client,
    pub worker_id: String,
    pub handlers: std::collections::HashMap<String, Handler>,
    pub fallback: Option<Handler>,
    pub visibility: Duration,
    pub run_slots: Arc<Semaphore>,
    pub phase: watch::Receiver<Phase>,
    pub counters: Counters,
    /// The `Work` session settles go on first (stream protocol); None: unary calls.
    pub link: Option<Arc<Link>>,
}

impl Shared {
    /// Acks on the session when one is up, else (or when it broke meanwhile) unary.
    async fn ack(&self, req: pb::AckRequest) -> Result<(), Error> {
        let timeout = self.client.call_timeout();
        if let Some(link) = &self.link {
            if let Some(r) = link.call(Kind::Ack(req.clone()), timeout).await {
                return r.map(drop);
            }
        }
        self.client
            .broker(req, timeout, |mut b, r| async move { b.ack(r).await })
            .await
            .map(drop)
    }

    /// Nacks on the session when one is up, else unary (see [`Shared::ack`]).
    async fn nack(&self, req: pb::NackRequest) -> Result<(), Error> {
        let timeout = self.client.call_timeout();
        if let Some(link) = &self.link {
            if let Some(r) = link.call(Kind::Nack(req.clone()), timeout).await {
                return r.map(drop);
            }
        }
        self.client
            .broker(req, timeout, |mut b, r| async move { b.nack(r).await })
            .await
            .map(drop)
    }

    /// Extends on the session when one is up, else unary (see [`Shared::ack`]).
    async fn extend(&self, req: pb::ExtendLeaseRequest, timeout: Duration) -> Result<(), Error> {
        if let Some(link) = &self.link {
            if let Some(r) = link.call(Kind::Extend(req.clone()), timeout).await {
                return r.map(drop);
            }
        }
        self.client
            .broker(
                req,
                timeout,
                |mut b, r| async move { b.extend_lease(r).await },
            )
            .await
            .map(drop)
    }
}

enum Outcome {
    Done(Bytes),
    Failed(HandlerError),
    Panicked(String),
    Ended(LeaseEnd),
    Interrupted,
}

/// Runs one leased job to its end. `_hand` is the worker's capacity slot, released
/// when the job is settled.
#[tracing::instrument(skip_all, fields(job_id = %leased.job_id, job_type = %leased.job_type, attempt = leased.attempt))]
pub(crate) async fn run(shared: Arc<Shared>, leased: pb::LeasedJob, _hand: OwnedSemaphorePermit) {
    let leased = Arc::new(leased);
    let (progress, progress_rx) = ProgressReporter::new();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (end_tx, mut end_rx) = watch::channel::<Option<LeaseEnd>>(None);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let heartbeat = tokio::spawn(heartbeat(
        shared.clone(),
        leased.clone(),
        progress_rx,
        cancel_tx,
        end_tx,
        stop_rx,
    ));
    let outcome = execute(&shared, &leased, progress, cancel_rx, &mut end_rx).await;
    let _ = stop_tx.send(());
    let _ = heartbeat.await;
    settle(&shared, &leased, outcome).await;
}

async fn execute(
    shared: &Shared,
    leased: &Arc<pb::LeasedJob>,
    progress: ProgressReporter,
    cancel_rx: watch::Receiver<bool>,
    end_rx: &mut watch::Receiver<Option<LeaseEnd>>,
) -> Outcome {
    let mut phase = shared.phase.clone();
    let _slot = tokio::select! {
        slot = shared.run_slots.clone().acquire_owned() => slot.expect("run slots are never closed"),
        Ok(_) = phase.wait_for(|p| *p >= Phase::Draining) => return Outcome::Interrupted,
        Ok(end) = end_rx.wait_for(Option::is_some) => return Outcome::Ended(end.clone().expect("some")),
    };
    let Some(handler) = shared
        .handlers
        .get(&leased.job_type)
        .or(shared.fallback.as_ref())
        .cloned()
    else {
        return Outcome::Failed(HandlerError::new(format!(
            "worker {} has no handler for job_type {:?}",
            shared.worker_id, leased.job_type
        )));
    };
    let job = Job::new(leased.clone(), progress, cancel_rx);
    let mut task = tokio::spawn(handler(job));
    tokio::select! {
        r = &mut task => match r {
            Ok(Ok(result)) => Outcome::Done(result),
            Ok(Err(e)) => Outcome::Failed(e),
            Err(e) if e.is_panic() => Outcome::Panicked(panic_message(e.into_panic())),
            Err(_) => Outcome::Failed(HandlerError::new("handler task was cancelled")),
        },
        Ok(end) = end_rx.wait_for(Option::is_some) => {
            let end = end.clone().expect("some");
            task.abort();
            Outcome::Ended(end)
        }
        Ok(_) = phase.wait_for(|p| *p == Phase::Abort) => {
            task.abort();
            Outcome::Interrupted
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

async fn settle(shared: &Shared, leased: &pb::LeasedJob, outcome: Outcome) {
    let c = &shared.counters;
    let nack = |error: String, retry_after_ms: u64, dead_letter: bool| pb::NackRequest {
        job_id: leased.job_id.clone(),
        lease_id: leased.lease_id.clone(),
        error,
        retry_after_ms,
        dead_letter,
    };
    let (req, counter) = match outcome {
        Outcome::Done(result) => {
            let req = pb::AckRequest {
                job_id: leased.job_id.clone(),
                lease_id: leased.lease_id.clone(),
                result,
            };
            match shared.ack(req).await {
                Ok(_) => {
                    c.succeeded.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("acked");
                }
                Err(e) => {
                    c.abandoned.fetch_add(1, Ordering::Relaxed);
                    log_settle_error("ack", &e);
                }
            }
            return;
        }
        Outcome::Failed(e) => {
            tracing::info!(error = %e, permanent = e.is_permanent(), "handler failed");
            let retry = e.retry_delay().map(ms).unwrap_or(0);
            (
                nack(e.message().to_string(), retry, e.is_permanent()),
                &c.failed,
            )
        }
        Outcome::Panicked(msg) => {
            tracing::warn!(panic = %msg, "handler panicked");
            (
                nack(format!("handler panicked: {msg}"), 0, false),
                &c.failed,
            )
        }
        Outcome::Ended(LeaseEnd::Cancelled) => {
            tracing::info!("job cancelled; handler stopped");
            c.abandoned.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Outcome::Ended(LeaseEnd::Lost(why)) => {
            tracing::warn!(error = %why, "lease lost; handler stopped");
            c.abandoned.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // 1 ms, not 0: 0 would mean the broker's exponential backoff.
        Outcome::Interrupted => (
            nack("worker shut down before the job finished".into(), 1, false),
            &c.abandoned,
        ),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = shared.nack(req).await {
        log_settle_error("nack", &e);
    }
}

fn log_settle_error(call: &str, e: &Error) {
    match e {
        Error::Cancelled(_) => tracing::info!(call, "job was cancelled meanwhile"),
        Error::LeaseLost(_) | Error::NotFound(_) => {
            tracing::warn!(call, error = %e, "lease lost before settling; the job runs again elsewhere")
        }
        _ => {
            tracing::error!(call, error = %e, "settling failed; the job runs again after its lease expires")
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Extends the lease every third of the visibility timeout, and soon after a
/// progress report, until stopped or the lease ends.
async fn heartbeat(
    shared: Arc<Shared>,
    leased: Arc<pb::LeasedJob>,
    mut progress: watch::Receiver<Option<(u32, String)>>,
    cancel_tx: watch::Sender<bool>,
    end_tx: watch::Sender<Option<LeaseEnd>>,
    mut stop: oneshot::Receiver<()>,
) {
    let every = (shared.visibility / 3).max(Duration::from_millis(10));
    let min_gap = every.min(Duration::from_millis(200));
    let mut last = Instant::now();
    let mut progress_open = true;
    loop {
        let mut next = last + every;
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep_until(next) => {}
            r = progress.changed(), if progress_open => match r {
                // Report soon, but not more often than every `min_gap`.
                Ok(()) => next = (last + min_gap).max(Instant::now()),
                Err(_) => {
                    progress_open = false;
                    continue;
                }
            },
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let (percent, message) = progress.borrow_and_update().clone().unwrap_or_default();
        let req = pb::ExtendLeaseRequest {
            job_id: leased.job_id.clone(),
            lease_id: leased.lease_id.clone(),
            visibility_timeout_ms: ms(shared.visibility),
            progress: percent,
            progress_message: message,
        };
        last = Instant::now();
        let call = shared.extend(req, every.max(Duration::from_secs(1)));
        let r = tokio::select! {
            _ = &mut stop => return,
            r = tokio::time::timeout(shared.visibility, call) => r,
        };
        match r {
            Ok(Ok(())) => {}
            Ok(Err(Error::Cancelled(_))) => {
                let _ = cancel_tx.send(true);
                let _ = end_tx.send(Some(LeaseEnd::Cancelled));
                return;
            }
            Ok(Err(
                e @ (Error::LeaseLost(_) | Error::NotFound(_) | Error::FailedPrecondition(_)),
            )) => {
                let _ = end_tx.send(Some(LeaseEnd::Lost(e.to_string())));
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lease extension failed; retrying"),
            Err(_) => tracing::warn!("lease extension timed out; retrying"),
        }
    }
}
