//! `taskraft.v1.Broker`: enqueue, lease, ack, nack, extend, get, cancel.

use std::sync::Arc;
use std::time::Duration;

use taskraft_proto::v1 as pb;
use taskraft_proto::v1::broker_server::Broker;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::auth::{self, check_job_queue};
use super::convert::{job_to_pb, leased_to_pb, state_to_pb};
use super::validate::{self as validate, MAX_BATCH, MAX_DELAY_MS, MAX_TEXT};
use super::ApiSettings;
use crate::error::BrokerError;
use crate::queue::{Command, NewJob, Outcome};
use crate::raft::RaftNode;

/// How often a waiting Lease looks again without being woken. Every path that makes a
/// job leasable wakes the waiters of its queue (`ReadSide::watch_queues`), so this is a
/// safety net, not the mechanism; each look costs a read transaction, and with 10,000
/// idle workers a look per second each took about a tenth of the node's enqueue rate.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// The Broker service of one node.
#[derive(Clone)]
pub struct BrokerService {
    node: Arc<RaftNode>,
    settings: ApiSettings,
    metrics: Arc<crate::metrics::Metrics>,
    /// This node's `Work` sessions (parked ones, shutdown signal).
    sessions: Arc<super::work_stream::Sessions>,
}

impl BrokerService {
    /// Serves `node` with `settings`.
    pub fn new(node: Arc<RaftNode>, settings: ApiSettings) -> Self {
        Self {
            node,
            settings,
            metrics: crate::metrics::Metrics::disabled(),
            sessions: Arc::default(),
        }
    }

    /// This node's `Work` sessions.
    pub fn sessions(&self) -> &Arc<super::work_stream::Sessions> {
        &self.sessions
    }

    /// The node served.
    pub(super) fn node(&self) -> &Arc<RaftNode> {
        &self.node
    }

    /// Counts Lease looks into `metrics` (jobs are counted from the core's transitions).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Validates one job and builds it (see [`super::new_job::new_job`]).
    pub(super) fn new_job(
        &self,
        call: pb::EnqueueRequest,
        index: Option<usize>,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<NewJob, BrokerError> {
        super::new_job::new_job(call, index, metadata, &self.settings, self.node.now_ms())
    }

    pub(super) async fn enqueue_jobs(
        &self,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<pb::EnqueueResponse>, BrokerError> {
        // This node's disk; the leader checks its own before it proposes (service.rs).
        self.node.disk().check_enqueue()?;
        match self.node.propose(Command::EnqueueNumbered(jobs)).await? {
            Outcome::Enqueued(res) => Ok(res
                .into_iter()
                .map(|e| pb::EnqueueResponse {
                    job_id: e.job_id,
                    duplicate: e.duplicate,
                })
                .collect()),
            other => Err(unexpected(other)),
        }
    }

    fn visibility(&self, ms: u64) -> Result<u64, BrokerError> {
        validate::timeout_ms(
            "visibility_timeout_ms",
            ms,
            self.settings.visibility_timeout.as_millis() as u64,
        )
    }
}

fn unexpected(o: Outcome) -> BrokerError {
    BrokerError::Internal(format!("unexpected outcome {o:?}"))
}

#[tonic::async_trait]
impl Broker for BrokerService {
    #[tracing::instrument(skip_all, fields(queue = %req.get_ref().queue, job_id))]
    async fn enqueue(
        &self,
        req: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        crate::telemetry::set_remote_parent(req.metadata());
        let cred = auth::credential(&req);
        let (metadata, _, call) = req.into_parts();
        cred.check_queue("queue", &call.queue)?;
        let job = self.new_job(call, None, &metadata)?;
        let mut res = self.enqueue_jobs(vec![job]).await?;
        let one = res
            .pop()
            .ok_or_else(|| BrokerError::Internal("no enqueue result".into()))?;
        tracing::Span::current().record("job_id", one.job_id.as_str());
        Ok(Response::new(one))
    }

    #[tracing::instrument(skip_all, fields(jobs = req.get_ref().jobs.len()))]
    async fn enqueue_batch(
        &self,
        req: Request<pb::EnqueueBatchRequest>,
    ) -> Result<Response<pb::EnqueueBatchResponse>, Status> {
        crate::telemetry::set_remote_parent(req.metadata());
        let cred = auth::credential(&req);
        let (metadata, _, call) = req.into_parts();
        let jobs = call.jobs;
        for j in &jobs {
            cred.check_queue("jobs.queue", &j.queue)?;
        }
        if jobs.is_empty() {
            return Err(BrokerError::invalid("jobs", "the batch is empty").into());
        }
        if jobs.len() > MAX_BATCH {
            return Err(BrokerError::invalid(
                "jobs",
                format!("{} jobs; at most {MAX_BATCH} per batch", jobs.len()),
            )
            .into());
        }
        // The whole batch becomes one Raft entry: bound it before any per-job work.
        validate::batch_bytes(
            jobs.iter()
                .map(|j| {
                    validate::job_bytes(
                        j.payload.len(),
                        &[
                            &j.job_type,
                            &j.idempotency_key,
                            &j.request_id,
                            &j.webhook_url,
                            &j.queue,
                        ],
                        j.headers.iter(),
                    )
                })
                .sum(),
        )?;
        let jobs = jobs
            .into_iter()
            .enumerate()
            .map(|(i, job)| self.new_job(job, Some(i), &metadata))
            .collect::<Result<Vec<_>, _>>()?;
        let results = self.enqueue_jobs(jobs).await?;
        Ok(Response::new(pb::EnqueueBatchResponse { results }))
    }

    type EnqueueStreamStream = super::enqueue_stream::Answers;
    type WorkStream = super::work_stream::Pushes;

    async fn work(
        &self,
        req: Request<tonic::Streaming<pb::WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        crate::telemetry::set_remote_parent(req.metadata());
        super::work_stream::serve(self.clone(), req).await
    }

    async fn enqueue_stream(
        &self,
        req: Request<tonic::Streaming<pb::EnqueueStreamRequest>>,
    ) -> Result<Response<Self::EnqueueStreamStream>, Status> {
        crate::telemetry::set_remote_parent(req.metadata());
        super::enqueue_stream::serve(self.clone(), req).await
    }

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id, queues = ?req.get_ref().queues, leased, queue, job_id, attempt))]
    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let caller_timeout = crate::deadline::grpc_timeout(req.metadata());
        let cred = auth::credential(&req);
        let call = req.into_inner();
        validate::lease_request(&call)?;
        for q in &call.queues {
            cred.check_queue("queues", q)?;
        }
        let visibility = self.visibility(call.visibility_timeout_ms)?;
        let wait = validate::timeout_ms("wait_ms", call.wait_ms, 0)?;
        let mut wait = Duration::from_millis(wait);
        if let Some(t) = caller_timeout {
            // Answer (possibly empty) a little before the caller gives up.
            wait = wait.min(
                t.saturating_sub(t / 10)
                    .saturating_sub(Duration::from_millis(50)),
            );
        }
        let deadline = Instant::now() + wait;
        let worker_id = if call.worker_id.is_empty() {
            "anonymous".to_string()
        } else {
            call.worker_id
        };
        let cmd = Command::Lease {
            queues: call.queues.clone(),
            worker_id: worker_id.clone(),
            max_jobs: call.max_jobs.max(1),
            visibility_timeout_ms: visibility,
        };
        // A follower's applied state may trail the leader's: when it sees nothing to
        // lease, catch up to the leader's commit index first so a job enqueued just
        // before is seen. (When it does see jobs, the Lease goes to the leader anyway,
        // which leases from its own, current state.) Later wake-ups come from this
        // node's own applies.
        if !self.node.is_leader() && !self.node.view().state.has_leasable(&call.queues) {
            self.node.read_barrier().await?;
        }
        let node = &self.node;
        // One view for both: whether anything is leasable, and whether a worker polling
        // empty queues needs one Lease entry to be registered or refreshed (it leases
        // whatever is there by then, queue/worker.rs).
        let (leasable, mut register) = {
            let view = node.view();
            let register = view
                .state
                .worker_needs_refresh(&worker_id, &call.queues, node.now_ms());
            (view.state.has_leasable(&call.queues), register)
        };
        if !leasable {
            // Read views trail apply by a few milliseconds: a job enqueued (and
            // answered) just before must not be missed by a Lease that does not wait.
            node.caught_up().await;
        }
        let watches = node.watch_queues(&call.queues);
        loop {
            // Registered before the check, so that jobs filed between the check and the
            // wait still wake this call.
            let mut woken: Vec<_> = watches.iter().map(|n| Box::pin(n.notified())).collect();
            for n in &mut woken {
                n.as_mut().enable();
            }
            self.metrics.lease_poll();
            if std::mem::take(&mut register) || node.view().state.has_leasable(&call.queues) {
                match self.node.propose(cmd.clone()).await? {
                    Outcome::Leased(jobs) if !jobs.is_empty() || Instant::now() >= deadline => {
                        let span = tracing::Span::current();
                        span.record("leased", jobs.len());
                        if let [one] = jobs.as_slice() {
                            span.record("queue", one.queue.as_str());
                            span.record("job_id", one.job_id.as_str());
                            span.record("attempt", one.attempt);
                        }
                        return Ok(Response::new(pb::LeaseResponse {
                            jobs: jobs.into_iter().map(leased_to_pb).collect(),
                        }));
                    }
                    Outcome::Leased(_) => {}
                    other => return Err(unexpected(other).into()),
                }
            } else if Instant::now() >= deadline {
                return Ok(Response::new(pb::LeaseResponse { jobs: Vec::new() }));
            }
            // Wake when one of these queues gains ready jobs (enqueued, due, redelivered,
            // resumed: on this node's own commit), or re-check after RECHECK_EVERY.
            let _ = tokio::time::timeout_at(
                deadline.min(Instant::now() + RECHECK_EVERY),
                futures::future::select_all(woken),
            )
            .await;
        }
    }

    #[tracing::instrument(skip_all, fields(job_id = %req.get_ref().job_id))]
    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        crate::telemetry::set_remote_parent(req.metadata());
        let cred = auth::credential(&req);
        let call = req.into_inner();
        validate::job_id(&call.job_id)?;
        check_job_queue(&self.node, &cred, &call.job_id)?;
        let lease_id = validate::lease_id(&call.lease_id)?;
        validate::blob("result", call.result.len(), self.settings.max_payload)?;
        self.node
            .propose(Command::Ack {
                job_id: call.job_id,
                lease_id,
                result: call.result,
            })
            .await?;
        Ok(Response::new(pb::AckResponse {}))
    }

    #[tracing::instrument(skip_all, fields(job_id = %req.get_ref().job_id, to))]
    async fn nack(
        &self,
        req: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        crate::telemetry::set_remote_parent(req.metadata());
        let cred = auth::credential(&req);
        let call = req.into_inner();
        validate::job_id(&call.job_id)?;
        check_job_queue(&self.node, &cred, &call.job_id)?;
        let lease_id = validate::lease_id(&call.lease_id)?;
        validate::text("error", &call.error, MAX_TEXT)?;
        if call.retry_after_ms > MAX_DELAY_MS {
            return Err(BrokerError::invalid(
                "retry_after_ms",
                format!(
                    "{} ms is over the limit of {MAX_DELAY_MS} ms",
                    call.retry_after_ms
                ),
            )
            .into());
        }
        let out = self
            .node
            .propose(Command::Nack {
                job_id: call.job_id,
                lease_id,
                error: call.error,
                retry_after_ms: (call.retry_after_ms > 0).then_some(call.retry_after_ms),
                dead_letter: call.dead_letter,
                backoff: self.settings.backoff,
            })
            .await?;
        match out {
            Outcome::Nacked { state, run_at_ms } => {
                tracing::Span::current().record("to", state.name());
                Ok(Response::new(pb::NackResponse {
                    state: state_to_pb(state) as i32,
                    run_at_ms,
                }))
            }
            other => Err(unexpected(other).into()),
        }
    }

    #[tracing::instrument(skip_all, fields(job_id = %req.get_ref().job_id))]
    async fn extend_lease(
        &self,
        req: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        let cred = auth::credential(&req);
        let call = req.into_inner();
        validate::job_id(&call.job_id)?;
        check_job_queue(&self.node, &cred, &call.job_id)?;
        let lease_id = validate::lease_id(&call.lease_id)?;
        let visibility = self.visibility(call.visibility_timeout_ms)?;
        if call.progress > 100 {
            return Err(
                BrokerError::invalid("progress", format!("{} is over 100", call.progress)).into(),
            );
        }
        validate::text("progress_message", &call.progress_message, MAX_TEXT)?;
        let report = call.progress > 0 || !call.progress_message.is_empty();
        let out = self
            .node
            .propose(Command::Extend {
                job_id: call.job_id,
                lease_id,
                visibility_timeout_ms: visibility,
                progress: report.then_some(call.progress),
                progress_message: report.then_some(call.progress_message),
            })
            .await?;
        match out {
            Outcome::Extended { deadline_ms } => Ok(Response::new(pb::ExtendLeaseResponse {
                lease_deadline_ms: deadline_ms,
            })),
            other => Err(unexpected(other).into()),
        }
    }

    #[tracing::instrument(skip_all, fields(job_id = %req.get_ref().job_id))]
    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let cred = auth::credential(&req);
        let call = req.into_inner();
        validate::job_id(&call.job_id)?;
        check_job_queue(&self.node, &cred, &call.job_id)?;
        self.node.read_barrier().await?;
        let data = self.node.view();
        let job = data.state.job(&call.job_id).ok_or_else(|| {
            BrokerError::Core(crate::queue::CoreError::JobNotFound(call.job_id.clone()))
        })?;
        Ok(Response::new(job_to_pb(&job)))
    }

    #[tracing::instrument(skip_all, fields(job_id = %req.get_ref().job_id))]
    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let cred = auth::credential(&req);
        let call = req.into_inner();
        validate::job_id(&call.job_id)?;
        check_job_queue(&self.node, &cred, &call.job_id)?;
        match self
            .node
            .propose(Command::Cancel {
                job_id: call.job_id,
            })
            .await?
        {
            Outcome::Job(job) => Ok(Response::new(job_to_pb(&job))),
            other => Err(unexpected(other).into()),
        }
    }
}
