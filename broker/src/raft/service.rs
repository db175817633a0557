//! Server side of the peer service (`taskraft.raft.v1.RaftPeer`): hands Raft messages
//! to openraft, and serves forwarded writes and read-index requests on the leader.
//!
//! It runs on its own listener (`--peer-listen`), behind the cluster secret
//! (`peer_auth.rs`), never on the client port. Messages are size-capped by tonic before
//! decoding ([`super::network::MAX_PEER_MESSAGE`]), commands cannot nest batches
//! (`queue/command.rs`), and a forwarded write is checked again with the API's limits.

use std::sync::Arc;

use taskraft_proto::raft::raft_peer_server::RaftPeer;
use taskraft_proto::raft::RaftMessage;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::node::{ProposeError, RaftNode};
use super::wire::{decode, encode};
use crate::api::ApiSettings;
use crate::queue::Command;

/// The peer service of one node.
pub struct PeerService {
    node: Arc<RaftNode>,
    settings: ApiSettings,
}

impl PeerService {
    /// Serves `node`; forwarded writes are held to the API's limits in `settings`.
    pub fn new(node: Arc<RaftNode>, settings: ApiSettings) -> Self {
        Self { node, settings }
    }
}

/// Longest deadline a peer call may carry: a forwarded call never waits longer than a
/// client call could, and a huge `grpc-timeout` cannot overflow an `Instant`.
const MAX_PEER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    let data = encode(value).map_err(|e| Status::internal(format!("encoding peer reply: {e}")))?;
    Ok(Response::new(RaftMessage { data: data.into() }))
}

fn parse<T: serde::de::DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    decode(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable peer message: {e}")))
}

fn deadline_of<T>(req: &Request<T>) -> Instant {
    let wait = crate::deadline::grpc_timeout(req.metadata())
        .unwrap_or(std::time::Duration::from_secs(5))
        .min(MAX_PEER_DEADLINE);
    Instant::now() + wait
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = parse(req)?;
        reply(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = parse(req)?;
        reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = parse(req)?;
        reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn propose(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let deadline = deadline_of(&req);
        let cmd: Command = parse(req)?;
        crate::api::validate::forwarded(&cmd, &self.settings, self.node.now_ms())
            .map_err(|e| Status::invalid_argument(format!("forwarded command refused: {e}")))?;
        let disk = match &cmd {
            Command::Enqueue(_) => self.node.disk().check_enqueue(),
            _ => Ok(()),
        };
        let res = if let Err(e) = disk {
            Err(ProposeError::Unavailable(e.to_string()))
        } else if self.node.is_leader() {
            self.node.propose_local(cmd, deadline).await
        } else {
            Err(ProposeError::NotLeader)
        };
        reply(&res)
    }

    async fn campaign(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let old_leader: super::types::NodeId = parse(req)?;
        tokio::spawn(self.node.clone().campaign(old_leader));
        reply(&())
    }

    async fn cluster_time(
        &self,
        _req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        reply(&self.node.known_time_ms())
    }

    async fn read_index(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let deadline = deadline_of(&req);
        let res = if self.node.is_leader() {
            self.node.leader_read_index(deadline).await
        } else {
            Err(ProposeError::NotLeader)
        };
        reply(&res)
    }
}
