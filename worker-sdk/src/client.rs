//! [`Client`]: producer and admin calls against a taskraft cluster.
//!
//! Any node serves any call (followers forward to the leader), so the client keeps
//! one lazily connected channel per address and simply moves on to the next address
//! when a call fails with UNAVAILABLE or cannot connect:
//!
//! ```text
//!   call ──> node[i] ──ok──> answer
//!              │ UNAVAILABLE / connect error
//!              └──> i = i + 1, sleep 50 ms .. 1 s (doubling, ±20 %) ──> again,
//!                   until the retry window (default 30 s) is used up
//! ```
//!
//! A call that failed on this side of the wire (the connection broke mid-call, e.g. the
//! node was killed, or connecting timed out) is retried the same way; tonic reports
//! those as UNKNOWN, CANCELLED or (a stream cut by the HTTP/2 connection ending, as when
//! a node shuts down mid-call) INTERNAL rather than UNAVAILABLE (see `failed_locally`).
//!
//! Every other error is returned at once, classified as an [`Error`]. Each attempt
//! carries its own deadline (`grpc-timeout`), and the bearer token when one is set.
//!
//! Retrying an enqueue after UNAVAILABLE cannot store the job twice: every enqueue
//! request carries a random `request_id`, the same on each of its attempts, and the
//! broker answers a repeat within 5 minutes with the first job (`duplicate`). An
//! idempotency key ([`EnqueueOptions::idempotency_key`]) does the same across separate
//! calls and for as long as the broker's dedup window.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use taskraft_proto::v1 as pb;
use taskraft_proto::v1::admin_client::AdminClient;
use taskraft_proto::v1::broker_client::BrokerClient;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::batcher::{Batcher, BatcherOptions};
use crate::info::{JobInfo, JobState};
use crate::options::{EnqueueOptions, Enqueued, NewJob};
use crate::Error;

const MAX_MESSAGE: usize = 64 << 20;

/// Builds a [`Client`]; see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addrs: Vec<String>,
    token: Option<String>,
    call_timeout: Duration,
    connect_timeout: Duration,
    retry_for: Duration,
    tls_ca: Option<Vec<u8>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            addrs: Vec::new(),
            tls_ca: None,
            token: None,
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            retry_for: Duration::from_secs(30),
        }
    }
}

impl ClientBuilder {
    /// Adds a node address: `host:port` or `http(s)://host:port`.
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.addrs.push(addr.into());
        self
    }

    /// Adds several node addresses.
    pub fn addrs<I, S>(mut self, addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.addrs.extend(addrs.into_iter().map(Into::into));
        self
    }

    /// Sends `authorization: Bearer <token>` on every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Deadline of one attempt of one call (default 10 s; long polls add their wait).
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// How long to wait for a TCP connection to a node (default 3 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// PEM CA certificate(s) the nodes' TLS certificates are verified with. Addresses
    /// without a scheme then use `https://`.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(pem.into());
        self
    }

    /// How long a call keeps retrying UNAVAILABLE across the nodes (default 30 s;
    /// zero: one attempt).
    pub fn retry_for(mut self, d: Duration) -> Self {
        self.retry_for = d;
        self
    }

    /// Checks the settings and builds the client. Nothing is dialled yet: channels
    /// connect on first use, so a cluster that is still starting is not an error.
    pub async fn connect(self) -> Result<Client, Error> {
        if self.addrs.is_empty() {
            return Err(Error::Config("no node address given".into()));
        }
        if self.call_timeout.is_zero() {
            return Err(Error::Config("call_timeout must be above zero".into()));
        }
        let mut channels = Vec::with_capacity(self.addrs.len());
        for addr in &self.addrs {
            let uri = if addr.contains("://") {
                addr.clone()
            } else if self.tls_ca.is_some() {
                format!("https://{addr}")
            } else {
                format!("http://{addr}")
            };
            let mut endpoint = Endpoint::from_shared(uri).map_err(|e| Error::InvalidAddress {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
            if let Some(ca) = &self.tls_ca {
                let tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca));
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| Error::InvalidAddress {
                        addr: addr.clone(),
                        reason: format!("TLS settings: {e}"),
                    })?;
            }
            channels.push(
                endpoint
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true)
                    .connect_lazy(),
            );
        }
        let token = match self.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| Error::Config("the token must be printable ASCII".into()))?,
            ),
            None => None,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                addrs: self.addrs.join(","),
                channels,
                current: AtomicUsize::new(0),
                leader_known: std::sync::atomic::AtomicBool::new(false),
                token,
                call_timeout: self.call_timeout,
                retry_for: self.retry_for,
            }),
        })
    }
}

/// A `Work` stream just opened (see [`Client::open_work`]).
pub(crate) struct WorkConn {
    /// The index of the node it runs on (a resume must come back to it).
    pub node: usize,
    /// Requests up the stream; dropping every sender half-closes it.
    pub up: tokio::sync::mpsc::Sender<pb::WorkRequest>,
    /// Pushes and answers, after the `WorkOpened` already read.
    pub down: tonic::Streaming<pb::WorkResponse>,
    pub opened: pb::WorkOpened,
}

/// A handle to a taskraft cluster. Cheap to clone; clones share connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), taskraft::Error> {
/// let client = taskraft::Client::connect(["127.0.0.1:7070"]).await?;
/// let id = client.enqueue("emails", "hello").await?;
/// println!("{:?}", client.get_job(&id).await?.state);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    addrs: String,
    channels: Vec<Channel>,
    current: AtomicUsize,
    /// False until a call has asked a node who leads (and again after UNAVAILABLE).
    leader_known: std::sync::atomic::AtomicBool,
    token: Option<MetadataValue<Ascii>>,
    call_timeout: Duration,
    retry_for: Duration,
}

impl Inner {
    /// Node `idx` was unavailable: calls go to the next node (which is asked who leads);
    /// another caller may have moved on already.
    fn move_past(&self, idx: usize) {
        self.leader_known.store(false, Ordering::Relaxed);
        let _ = self.current.compare_exchange(
            idx,
            (idx + 1) % self.channels.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addrs", &self.inner.addrs)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder with the defaults (10 s per call, 30 s of retries, no token).
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client of the nodes at `addrs` with the default settings.
    pub async fn connect<I, S>(addrs: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder().addrs(addrs).connect().await
    }

    /// The node addresses, comma separated.
    pub fn addrs(&self) -> &str {
        &self.inner.addrs
    }

    /// Runs one call with retries: `f` gets a channel and a request that already
    /// carries the deadline and the token.
    pub(crate) async fn call<M, T, F, Fut>(
        &self,
        msg: M,
        timeout: Duration,
        f: F,
    ) -> Result<T, Error>
    where
        M: Clone,
        F: Fn(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let inner = &self.inner;
        let give_up = Instant::now() + inner.retry_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            self.prefer_leader().await;
            let idx = inner.current.load(Ordering::Relaxed) % inner.channels.len();
            let mut req = Request::new(msg.clone());
            req.set_timeout(timeout);
            if let Some(t) = &inner.token {
                req.metadata_mut().insert("authorization", t.clone());
            }
            // The server enforces grpc-timeout; this guards against a node that stopped
            // answering altogether.
            let guard = timeout + Duration::from_secs(2);
            let status =
                match tokio::time::timeout(guard, f(inner.channels[idx].clone(), req)).await {
                    Ok(Ok(resp)) => return Ok(resp.into_inner()),
                    Ok(Err(status)) => status,
                    Err(_) => Status::unavailable(format!("no answer within {guard:?}")),
                };
            if status.code() != Code::Unavailable && !failed_locally(&status) {
                return Err(Error::from_status(status));
            }
            inner.move_past(idx);
            // Keep trying for the whole window: the last pause is cut to what is left,
            // so the error comes no sooner than `retry_for` after the first attempt.
            let left = give_up.saturating_duration_since(Instant::now());
            let pause = backoff.mul_f64(rand::random_range(0.8..1.2)).min(left);
            if left.is_zero() {
                return Err(Error::Unavailable {
                    addrs: inner.addrs.clone(),
                    message: status.message().to_string(),
                });
            }
            tracing::debug!(addr = idx, error = %status.message(), "retrying after UNAVAILABLE");
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Any node serves any call, but the leader serves it without a forwarding hop:
    /// unless the leader is known, ask the current node who leads and, if the leader is
    /// one of our addresses, use it. Best effort: on any failure the current node stays.
    /// When the node knows no leader yet (an election is under way), the next call asks
    /// again, so a client that failed over during an election does not stay on a
    /// follower for good.
    async fn prefer_leader(&self) {
        let inner = &self.inner;
        // One ask at a time.
        if inner.leader_known.swap(true, Ordering::Relaxed) || inner.channels.len() < 2 {
            return;
        }
        let idx = inner.current.load(Ordering::Relaxed) % inner.channels.len();
        let mut req = Request::new(pb::GetClusterStatusRequest {});
        req.set_timeout(Duration::from_secs(1));
        if let Some(t) = &inner.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        let mut admin = AdminClient::new(inner.channels[idx].clone());
        let ask = admin.get_cluster_status(req);
        let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), ask).await else {
            return;
        };
        let status = status.into_inner();
        let Some(leader) = status.nodes.iter().find(|n| n.id == status.leader_id) else {
            inner.leader_known.store(false, Ordering::Relaxed);
            return;
        };
        let bare = |a: &str| {
            a.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string()
        };
        if let Some(pos) = inner
            .addrs
            .split(',')
            .position(|a| bare(a) == bare(&leader.addr))
        {
            inner.current.store(pos, Ordering::Relaxed);
        }
    }

    pub(crate) async fn broker<M, T, F, Fut>(
        &self,
        msg: M,
        timeout: Duration,
        f: F,
    ) -> Result<T, Error>
    where
        M: Clone,
        F: Fn(BrokerClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(msg, timeout, |ch, req| {
            f(
                BrokerClient::new(ch).max_decoding_message_size(MAX_MESSAGE),
                req,
            )
        })
        .await
    }

    /// Opens a `Work` session on node `node`, or (None) on the node calls go to (the
    /// leader when known), and waits for the session's name. A failure that another
    /// node may not have (UNAVAILABLE, a broken connection) moves the client on to the
    /// next node, as [`Client::call`] does; there is no retry here, the worker's
    /// session loop retries.
    pub(crate) async fn open_work(
        &self,
        node: Option<usize>,
        open: pb::WorkOpen,
    ) -> Result<WorkConn, Error> {
        let inner = &self.inner;
        let idx = match node {
            Some(i) => i % inner.channels.len(),
            None => {
                self.prefer_leader().await;
                inner.current.load(Ordering::Relaxed) % inner.channels.len()
            }
        };
        let (up, mut rx) = tokio::sync::mpsc::channel::<pb::WorkRequest>(1024);
        up.try_send(pb::WorkRequest {
            kind: Some(pb::work_request::Kind::Open(open)),
            seq: 0,
        })
        .expect("a new channel has room");
        let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut req = Request::new(body);
        if let Some(t) = &inner.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        let mut broker =
            BrokerClient::new(inner.channels[idx].clone()).max_decoding_message_size(MAX_MESSAGE);
        let attempt = async {
            let mut down = broker.work(req).await?.into_inner();
            match down.message().await? {
                Some(pb::WorkResponse {
                    kind: Some(pb::work_response::Kind::Opened(opened)),
                }) => Ok((down, opened)),
                other => Err(Status::internal(format!(
                    "the session's first answer must name it, got {other:?}"
                ))),
            }
        };
        let wait = inner.call_timeout;
        let status = match tokio::time::timeout(wait, attempt).await {
            Ok(Ok((down, opened))) => {
                return Ok(WorkConn {
                    node: idx,
                    up,
                    down,
                    opened,
                })
            }
            Ok(Err(status)) => status,
            Err(_) => Status::unavailable(format!("no answer to Work within {wait:?}")),
        };
        if status.code() != Code::Unavailable && !failed_locally(&status) {
            return Err(Error::from_status(status));
        }
        inner.move_past(idx);
        Err(Error::Unavailable {
            addrs: inner.addrs.clone(),
            message: status.message().to_string(),
        })
    }

    async fn admin<M, T, F, Fut>(&self, msg: M, f: F) -> Result<T, Error>
    where
        M: Clone,
        F: Fn(AdminClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(msg, self.inner.call_timeout, |ch, req| {
            f(
                AdminClient::new(ch).max_decoding_message_size(MAX_MESSAGE),
                req,
            )
        })
        .await
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    /// Enqueues `payload` on `queue` with default options; returns the job id.
    pub async fn enqueue(&self, queue: &str, payload: impl Into<Bytes>) -> Result<String, Error> {
        Ok(self.enqueue_job(NewJob::new(queue, payload)).await?.job_id)
    }

    /// Enqueues `value` encoded as JSON; returns the job id.
    pub async fn enqueue_json<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        value: &T,
    ) -> Result<String, Error> {
        Ok(self.enqueue_job(NewJob::json(queue, value)?).await?.job_id)
    }

    /// Enqueues with options (priority, delay, idempotency key, ...).
    pub async fn enqueue_with(
        &self,
        queue: &str,
        payload: impl Into<Bytes>,
        options: &EnqueueOptions,
    ) -> Result<Enqueued, Error> {
        self.enqueue_job(NewJob::new(queue, payload).options(options.clone()))
            .await
    }

    /// Enqueues one [`NewJob`].
    pub async fn enqueue_job(&self, job: NewJob) -> Result<Enqueued, Error> {
        let (req, trace) = job.into_request_and_trace();
        let value = |v: &str, field: &str| {
            v.parse::<MetadataValue<Ascii>>()
                .map_err(|_| Error::InvalidArgument(format!("{field}: not printable ASCII")))
        };
        let trace = match &trace {
            Some(t) => Some((
                value(&t.traceparent, "traceparent")?,
                t.tracestate
                    .as_deref()
                    .map(|s| value(s, "tracestate"))
                    .transpose()?,
            )),
            None => None,
        };
        let r = self
            .broker(req, self.call_timeout(), |mut c, mut r| {
                if let Some((parent, state)) = &trace {
                    r.metadata_mut().insert("traceparent", parent.clone());
                    if let Some(state) = state {
                        r.metadata_mut().insert("tracestate", state.clone());
                    }
                }
                async move { c.enqueue(r).await }
            })
            .await?;
        Ok(r.into())
    }

    /// Enqueues many jobs in one call: all are stored, or none (the error names the
    /// index of a refused job, e.g. `jobs[7]`). At most 10,000 per call.
    pub async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, Error> {
        let req = pb::EnqueueBatchRequest {
            jobs: jobs.into_iter().map(NewJob::into_request).collect(),
        };
        let r = self
            .broker(req, self.call_timeout(), |mut c, r| async move {
                c.enqueue_batch(r).await
            })
            .await?;
        Ok(r.results.into_iter().map(Enqueued::from).collect())
    }

    /// A [`Batcher`] that coalesces concurrent enqueues into batch calls.
    pub fn batcher(&self, options: BatcherOptions) -> Batcher {
        Batcher::start(self.clone(), options)
    }

    /// Reads one job.
    pub async fn get_job(&self, job_id: &str) -> Result<JobInfo, Error> {
        let req = pb::GetJobRequest {
            job_id: job_id.into(),
        };
        let j = self
            .broker(req, self.call_timeout(), |mut c, r| async move {
                c.get_job(r).await
            })
            .await?;
        Ok(j.into())
    }

    /// Polls a job until it is succeeded, dead or cancelled, or `timeout` passes
    /// ([`Error::Timeout`]).
    pub async fn wait_for_job(&self, job_id: &str, timeout: Duration) -> Result<JobInfo, Error> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let job = self.get_job(job_id).await?;
            if job.state.is_final() {
                return Ok(job);
            }
            if Instant::now() + pause > deadline {
                return Err(Error::Timeout(format!(
                    "job {job_id} still {:?} after {timeout:?}",
                    job.state
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Cancels a job that has not finished. A worker holding it is told at its next
    /// lease extension and stops the handler.
    pub async fn cancel_job(&self, job_id: &str) -> Result<JobInfo, Error> {
        let req = pb::CancelJobRequest {
            job_id: job_id.into(),
        };
        let j = self
            .broker(req, self.call_timeout(), |mut c, r| async move {
                c.cancel_job(r).await
            })
            .await?;
        Ok(j.into())
    }

    /// Brings a dead or cancelled job back to READY with fresh attempts.
    pub async fn retry_job(&self, job_id: &str) -> Result<JobInfo, Error> {
        let req = pb::RetryJobRequest {
            job_id: job_id.into(),
        };
        let j = self
            .admin(req, |mut c, r| async move { c.retry_job(r).await })
            .await?;
        Ok(j.into())
    }

    /// Counts of one queue.
    pub async fn queue_stats(&self, queue: &str) -> Result<pb::QueueStats, Error> {
        let req = pb::GetQueueStatsRequest {
            queue: queue.into(),
        };
        self.admin(req, |mut c, r| async move { c.get_queue_stats(r).await })
            .await
    }

    /// Counts of every queue.
    pub async fn list_queues(&self) -> Result<Vec<pb::QueueStats>, Error> {
        let r = self
            .admin(pb::ListQueuesRequest {}, |mut c, r| async move {
                c.list_queues(r).await
            })
            .await?;
        Ok(r.queues)
    }

    /// Stops handing out the queue's jobs (enqueues still work).
    pub async fn pause_queue(&self, queue: &str) -> Result<pb::QueueStats, Error> {
        let req = pb::PauseQueueRequest {
            queue: queue.into(),
        };
        self.admin(req, |mut c, r| async move { c.pause_queue(r).await })
            .await
    }

    /// Undoes [`Client::pause_queue`].
    pub async fn resume_queue(&self, queue: &str) -> Result<pb::QueueStats, Error> {
        let req = pb::ResumeQueueRequest {
            queue: queue.into(),
        };
        self.admin(req, |mut c, r| async move { c.resume_queue(r).await })
            .await
    }

    /// Moves every dead job of `queue` back to READY; returns how many.
    pub async fn redrive_dead_jobs(&self, queue: &str) -> Result<u64, Error> {
        let req = pb::RedriveDeadJobsRequest {
            queue: queue.into(),
        };
        let r = self
            .admin(req, |mut c, r| async move { c.redrive_dead_jobs(r).await })
            .await?;
        Ok(r.count)
    }

    /// Up to `limit` (at most 1000) jobs of `queue`, oldest first, optionally only those
    /// in `state`.
    pub async fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        limit: u32,
    ) -> Result<Vec<JobInfo>, Error> {
        let state = match state {
            None => pb::JobState::Unspecified,
            Some(JobState::Scheduled) => pb::JobState::Scheduled,
            Some(JobState::Ready) => pb::JobState::Ready,
            Some(JobState::Leased) => pb::JobState::Leased,
            Some(JobState::Succeeded) => pb::JobState::Succeeded,
            Some(JobState::Dead) => pb::JobState::Dead,
            Some(JobState::Cancelled) => pb::JobState::Cancelled,
            Some(JobState::Unknown) => {
                return Err(Error::InvalidArgument(
                    "state: Unknown is not a filter".into(),
                ))
            }
        };
        let req = pb::ListJobsRequest {
            queue: queue.into(),
            state: state as i32,
            limit,
            page_token: String::new(),
        };
        let r = self
            .admin(req, |mut c, r| async move { c.list_jobs(r).await })
            .await?;
        Ok(r.jobs.into_iter().map(JobInfo::from).collect())
    }

    /// Leader, term, members and log indexes as seen by the node that answers.
    pub async fn cluster_status(&self) -> Result<pb::ClusterStatus, Error> {
        self.admin(pb::GetClusterStatusRequest {}, |mut c, r| async move {
            c.get_cluster_status(r).await
        })
        .await
    }

    /// Workers the cluster has seen leasing recently.
    pub async fn list_workers(&self) -> Result<Vec<pb::Worker>, Error> {
        let r = self
            .admin(pb::ListWorkersRequest {}, |mut c, r| async move {
                c.list_workers(r).await
            })
            .await?;
        Ok(r.workers)
    }
}

/// True when a call failed on this side of the wire rather than with a status the
/// server sent: the connection broke mid-call (tonic: UNKNOWN "transport error"),
/// connecting timed out (CANCELLED "Timeout expired"), or the HTTP/2 connection ended
/// under the stream, as when a node shuts down while a call is in flight (INTERNAL "h2
/// protocol error": tonic maps a stream reset or GOAWAY with NO_ERROR, PROTOCOL_ERROR or
/// INTERNAL_ERROR to INTERNAL). tonic attaches the local error as the status' source;
/// statuses decoded from a server's answer have none. Like UNAVAILABLE, another node
/// (or the same one, restarted) may well answer, and a retry is safe: enqueues carry
/// their request id, and a resent Ack or Nack answers as the first.
fn failed_locally(s: &Status) -> bool {
    matches!(s.code(), Code::Unknown | Code::Cancelled | Code::Internal)
        && std::error::Error::source(s).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_broken_mid_call_is_retried_but_a_server_status_is_not() {
        let broken = Status::from_error(Box::new(std::io::Error::other(
            "connection closed before message completed",
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(failed_locally(&broken));
        let mut reset = Status::internal("h2 protocol error: http2 error");
        reset.set_source(std::sync::Arc::new(std::io::Error::other("stream reset")));
        assert!(failed_locally(&reset));
        assert!(!failed_locally(&Status::internal("a server-side bug")));
        assert!(!failed_locally(&Status::unknown("handler blew up")));
        assert!(!failed_locally(&Status::cancelled("the server cancelled")));
        assert!(!failed_locally(&Status::invalid_argument("queue")));
    }
}
