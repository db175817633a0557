//! `taskraft.v1.Admin`: cluster status, queue stats and settings, dead-job handling,
//! membership, workers.

use std::sync::Arc;

use taskraft_proto::v1 as pb;
use taskraft_proto::v1::admin_client::AdminClient;
use taskraft_proto::v1::admin_server::Admin;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::auth::{self, check_job_queue, Credential};
use super::convert::{job_to_pb, state_from_pb, stats_to_pb};
use super::validate::{self as validate, MAX_PAGE};
use crate::error::BrokerError;
use crate::queue::{Command, Outcome, QueueStats};
use crate::raft::addr::MemberAddr;
use crate::raft::RaftNode;

/// The Admin service of one node.
pub struct AdminService {
    node: Arc<RaftNode>,
    token: Option<String>,
}

impl AdminService {
    /// Serves `node`; `token` is sent when a membership call is forwarded to the leader.
    pub fn new(node: Arc<RaftNode>, token: Option<String>) -> Self {
        Self { node, token }
    }

    /// Membership changes run on the leader: a follower passes the call on through the
    /// leader's public Admin service, so an operator can use any node.
    /// The call is passed on with the caller's own `authorization` (or, with none,
    /// this node's `--token`), so the leader checks the caller's rights itself.
    async fn leader_admin(
        &self,
        caller: Option<MetadataValue<Ascii>>,
    ) -> Result<Option<AdminClient<InterceptedService<Channel, BearerToken>>>, BrokerError> {
        if self.node.is_leader() {
            return Ok(None);
        }
        let addr = self.node.leader_addr().ok_or_else(|| {
            BrokerError::Unavailable("no leader known; membership changes need a leader".into())
        })?;
        let channel = self
            .node
            .peers()
            .endpoint(&addr)
            .map_err(BrokerError::Internal)?
            .connect()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("cannot reach leader at {addr}: {e}")))?;
        Ok(Some(AdminClient::with_interceptor(
            channel,
            BearerToken(caller.or_else(|| {
                self.token
                    .as_ref()
                    .and_then(|t| format!("Bearer {t}").parse().ok())
            })),
        )))
    }

    async fn queue_cmd(&self, cmd: Command) -> Result<Response<pb::QueueStats>, Status> {
        match self.node.propose(cmd).await? {
            Outcome::Queue(s) => Ok(Response::new(stats_to_pb(s))),
            other => Err(BrokerError::Internal(format!("unexpected outcome {other:?}")).into()),
        }
    }

    async fn job_cmd(&self, cmd: Command) -> Result<Response<pb::Job>, Status> {
        match self.node.propose(cmd).await? {
            Outcome::Job(j) => Ok(Response::new(job_to_pb(&j))),
            other => Err(BrokerError::Internal(format!("unexpected outcome {other:?}")).into()),
        }
    }
}

/// Cluster status as this node sees it.
pub fn cluster_status(node: &RaftNode) -> pb::ClusterStatus {
    let v = node.cluster_view();
    pb::ClusterStatus {
        leader_id: v.leader_id.unwrap_or(0),
        term: v.term,
        nodes: v
            .members
            .into_iter()
            .map(|m| pb::ClusterNode {
                id: m.id,
                addr: m.addr,
                peer_addr: m.peer_addr,
                role: m.role.as_str().into(),
                matched_index: m.matched_index,
            })
            .collect(),
        last_log_index: v.last_log_index,
        commit_index: v.commit_index,
        applied_index: v.applied_index,
        node_id: v.node_id,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_cluster_status(
        &self,
        _req: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(cluster_status(&self.node)))
    }

    #[tracing::instrument(skip_all, fields(queue = %req.get_ref().queue))]
    async fn get_queue_stats(
        &self,
        req: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::QueueStats>, Status> {
        let cred = auth::credential(&req);
        let q = req.into_inner().queue;
        validate::queue_name("queue", &q)?;
        cred.check_queue("queue", &q)?;
        self.node.read_barrier().await?;
        // A queue with no jobs and no settings has all-zero counts.
        let stats = self
            .node
            .view()
            .state
            .queue_stats(&q)
            .unwrap_or(QueueStats {
                queue: q,
                ..Default::default()
            });
        Ok(Response::new(stats_to_pb(stats)))
    }

    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let cred = auth::credential(&req);
        self.node.read_barrier().await?;
        // A token limited to some queues sees only those.
        let queues = self
            .node
            .view()
            .state
            .all_queue_stats()
            .into_iter()
            .filter(|q| cred.may_use(&q.queue))
            .map(stats_to_pb)
            .collect();
        Ok(Response::new(pb::ListQueuesResponse { queues }))
    }

    #[tracing::instrument(skip_all, fields(queue = %req.get_ref().queue))]
    async fn pause_queue(
        &self,
        req: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::QueueStats>, Status> {
        let cred = auth::credential(&req);
        let queue = req.into_inner().queue;
        validate::queue_name("queue", &queue)?;
        cred.check_queue("queue", &queue)?;
        self.queue_cmd(Command::Pause { queue }).await
    }

    #[tracing::instrument(skip_all, fields(queue = %req.get_ref().queue))]
    async fn resume_queue(
        &self,
        req: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::QueueStats>, Status> {
        let cred = auth::credential(&req);
        let queue = req.into_inner().queue;
        validate::queue_name("queue", &queue)?;
        cred.check_queue("queue", &queue)?;
        self.queue_cmd(Command::Resume { queue }).await
    }

    #[tracing::instrument(skip_all, fields(queue = %req.get_ref().queue))]
    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let cred = auth::credential(&req);
        let call = req.into_inner();
        validate::queue_name("queue", &call.queue)?;
        cred.check_queue("queue", &call.queue)?;
        if pb::JobState::try_from(call.state).is_err() {
            return Err(
                BrokerError::invalid("state", format!("{} is not a JobState", call.state)).into(),
            );
        }
        if call.limit > MAX_PAGE {
            return Err(BrokerError::invalid(
                "limit",
                format!("{} is over the limit of {MAX_PAGE}", call.limit),
            )
            .into());
        }
        let limit = if call.limit == 0 {
            100
        } else {
            call.limit as usize
        };
        let after = if call.page_token.is_empty() {
            None
        } else {
            Some(call.page_token.parse::<u64>().map_err(|_| {
                BrokerError::invalid("page_token", "not a token returned by ListJobs")
            })?)
        };
        self.node.read_barrier().await?;
        let data = self.node.view();
        let (jobs, next) =
            data.state
                .list_jobs(&call.queue, state_from_pb(call.state), after, limit);
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(job_to_pb).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(job_id = %req.get_ref().job_id))]
    async fn retry_job(
        &self,
        req: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let cred = auth::credential(&req);
        let job_id = req.into_inner().job_id;
        validate::job_id(&job_id)?;
        check_job_queue(&self.node, &cred, &job_id)?;
        self.job_cmd(Command::Retry { job_id }).await
    }

    #[tracing::instrument(skip_all, fields(queue = %req.get_ref().queue))]
    async fn redrive_dead_jobs(
        &self,
        req: Request<pb::RedriveDeadJobsRequest>,
    ) -> Result<Response<pb::RedriveDeadJobsResponse>, Status> {
        let cred = auth::credential(&req);
        let queue = req.into_inner().queue;
        validate::queue_name("queue", &queue)?;
        cred.check_queue("queue", &queue)?;
        match self.node.propose(Command::Redrive { queue }).await? {
            Outcome::Redriven(count) => Ok(Response::new(pb::RedriveDeadJobsResponse { count })),
            other => Err(BrokerError::Internal(format!("unexpected outcome {other:?}")).into()),
        }
    }

    #[tracing::instrument(skip_all, fields(node_id = req.get_ref().node_id))]
    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let caller = membership_caller(&req)?;
        let call = req.into_inner();
        if call.node_id == 0 {
            return Err(BrokerError::invalid("node_id", "node ids start at 1").into());
        }
        let member = if call.peer_addr.is_empty() {
            MemberAddr::parse(&call.addr)
        } else {
            MemberAddr::parse(&format!("{}/{}", call.addr, call.peer_addr))
        }
        .map_err(|e| BrokerError::invalid("addr", e))?;
        if let Some(mut leader) = self.leader_admin(caller).await? {
            return leader.add_node(call).await;
        }
        self.node.add_node(call.node_id, member.encode()).await?;
        Ok(Response::new(cluster_status(&self.node)))
    }

    #[tracing::instrument(skip_all, fields(node_id = req.get_ref().node_id))]
    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let caller = membership_caller(&req)?;
        let call = req.into_inner();
        let members: Vec<u64> = self
            .node
            .cluster_view()
            .members
            .iter()
            .map(|m| m.id)
            .collect();
        if !members.contains(&call.node_id) {
            return Err(BrokerError::NotFound(format!(
                "node {} is not a member (members: {members:?})",
                call.node_id
            ))
            .into());
        }
        if members.len() == 1 {
            return Err(
                BrokerError::FailedPrecondition("cannot remove the last node".into()).into(),
            );
        }
        if let Some(mut leader) = self.leader_admin(caller).await? {
            return leader.remove_node(call).await;
        }
        self.node.remove_node(call.node_id).await?;
        Ok(Response::new(cluster_status(&self.node)))
    }

    type BackupStream = super::backup::BackupStream;

    #[tracing::instrument(skip_all)]
    async fn backup(
        &self,
        _req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        Ok(Response::new(super::backup::start(&self.node).await?))
    }

    async fn list_workers(
        &self,
        _req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        self.node.read_barrier().await?;
        let data = self.node.view();
        let workers = data
            .state
            .workers()
            .into_iter()
            .map(|(id, w)| pb::Worker {
                worker_id: id.clone(),
                queues: w.queues.clone(),
                jobs_in_hand: w.jobs_in_hand,
                last_seen_ms: w.last_seen_ms,
                leased_total: w.leased_total,
            })
            .collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }
}

/// Adds the caller's `authorization` to a membership call passed on to the leader.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Membership changes need an admin token without queue patterns; returns the
/// caller's `authorization` to pass on to the leader.
fn membership_caller<T>(req: &Request<T>) -> Result<Option<MetadataValue<Ascii>>, BrokerError> {
    let cred: Arc<Credential> = auth::credential(req);
    if cred.is_scoped() {
        return Err(BrokerError::PermissionDenied(
            "membership changes need an admin token without queue patterns".into(),
        ));
    }
    Ok(req.metadata().get("authorization").cloned())
}
