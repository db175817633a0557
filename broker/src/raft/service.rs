//! Server side of the peer service (`taskraft.raft.v1.RaftPeer`): hands Raft messages
//! to openraft, and serves forwarded writes (unary `Propose`, or a follower's `Forward`
//! stream, see `forward.rs`) and read-index requests on the leader.
//!
//! It runs on its own listener (`--peer-listen`), behind the cluster secret
//! (`peer_auth.rs`), never on the client port. Messages are size-capped by tonic before
//! decoding ([`super::network::MAX_PEER_MESSAGE`]), commands cannot nest batches
//! (`queue/command.rs`), and a forwarded write is checked again with the API's limits.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use taskraft_proto::raft::raft_peer_server::RaftPeer;
use taskraft_proto::raft::RaftMessage;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::forward::{ForwardMsg, ForwardReply};
use super::node::{ProposeError, RaftNode};
use super::wire::{decode, encode};
use crate::queue::{Command, Reply};

/// Checks a command a follower forwarded before this leader proposes it, given the
/// replicated time: the public API's rules (`api::validate::forwarded`), passed in by
/// `server.rs` so that the Raft layer does not depend on the API layer. An `Err`
/// names what is wrong.
pub type ForwardCheck = Arc<dyn Fn(&Command, u64) -> Result<(), String> + Send + Sync>;

/// The peer service of one node.
pub struct PeerService {
    node: Arc<RaftNode>,
    check: ForwardCheck,
    /// Becomes true when the node stops: `Forward` streams then take nothing new.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl PeerService {
    /// Serves `node`; forwarded writes must pass `check`.
    pub fn new(node: Arc<RaftNode>, check: ForwardCheck) -> Self {
        Self {
            node,
            check,
            stop: tokio::sync::watch::channel(false).1,
        }
    }

    /// Ends the `Forward` streams when `stop` becomes true (the server's graceful stop
    /// waits for every open stream, and a follower never closes its own).
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
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

/// Proposes a forwarded command (already checked) if this node leads.
async fn propose_forwarded(
    node: &RaftNode,
    cmd: Command,
    deadline: Instant,
) -> Result<Reply, ProposeError> {
    if let Command::Enqueue(_) | Command::EnqueueNumbered(_) = &cmd {
        node.disk()
            .check_enqueue()
            .map_err(|e| ProposeError::Unavailable(e.to_string()))?;
    }
    if !node.is_leader() {
        return Err(ProposeError::NotLeader);
    }
    node.propose_local(cmd, deadline).await
}

/// Serves one follower's `Forward` stream until it ends: each proposal runs on its own
/// task (the proposer batches them), a `Cancel` drops its task, and a stream that
/// breaks drops all of them, as a reset unary call would. A follower that half-closes
/// (it opened a newer stream), or this node stopping, ends the stream once what it
/// carries is answered.
async fn serve_forward_stream(
    node: Arc<RaftNode>,
    check: ForwardCheck,
    mut inbound: Streaming<RaftMessage>,
    out: mpsc::UnboundedSender<Result<RaftMessage, Status>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut running: JoinSet<u64> = JoinSet::new();
    let mut handles: HashMap<u64, AbortHandle> = HashMap::new();
    loop {
        tokio::select! {
            Ok(_) = stop.wait_for(|stop| *stop) => break,
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    // The follower is gone; dropping `running` aborts the rest.
                    Err(_) => return,
                };
                match decode::<ForwardMsg<Command>>(&msg.data) {
                    Ok(ForwardMsg::Propose { id, timeout_ms, cmd }) => {
                        let wait = std::time::Duration::from_millis(timeout_ms).min(MAX_PEER_DEADLINE);
                        let deadline = Instant::now() + wait;
                        if let Err(e) = check(&cmd, node.now_ms()) {
                            let refused = ProposeError::Unavailable(format!("forwarded command refused: {e}"));
                            let _ = out.send(reply_message(id, Err(refused)));
                            continue;
                        }
                        let (node, out) = (node.clone(), out.clone());
                        let handle = running.spawn(async move {
                            let reply = propose_forwarded(&node, cmd, deadline).await;
                            let _ = out.send(reply_message(id, reply));
                            id
                        });
                        handles.insert(id, handle);
                    }
                    Ok(ForwardMsg::Cancel { id }) => {
                        if let Some(h) = handles.remove(&id) {
                            h.abort();
                        }
                    }
                    Err(e) => {
                        let _ = out.send(Err(Status::invalid_argument(format!(
                            "undecodable forwarded message: {e}"
                        ))));
                        return;
                    }
                }
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(id) = done {
                    handles.remove(&id);
                }
            }
        }
    }
    while running.join_next().await.is_some() {}
}

fn reply_message(id: u64, reply: Result<Reply, ProposeError>) -> Result<RaftMessage, Status> {
    let data = encode(&ForwardReply { id, reply })
        .map_err(|e| Status::internal(format!("encoding a forwarded reply: {e}")))?;
    Ok(RaftMessage { data: data.into() })
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
        (self.check)(&cmd, self.node.now_ms())
            .map_err(|e| Status::invalid_argument(format!("forwarded command refused: {e}")))?;
        reply(&propose_forwarded(&self.node, cmd, deadline).await)
    }

    type ForwardStream =
        Pin<Box<dyn futures::Stream<Item = Result<RaftMessage, Status>> + Send + 'static>>;

    async fn forward(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let (out, rx) = mpsc::unbounded_channel();
        let task = serve_forward_stream(
            self.node.clone(),
            self.check.clone(),
            req.into_inner(),
            out,
            self.stop.clone(),
        );
        tokio::spawn(task.instrument(tracing::info_span!("forward_stream")));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
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
