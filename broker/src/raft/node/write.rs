//! Proposing: on the leader through the proposer (`proposer.rs`), on a follower by
//! forwarding the command to the leader over the peer service (its `Forward` stream,
//! `forward.rs`).

use super::*;

impl RaftNode {
    /// Waits (until `deadline`) for some leader to be known.
    pub(super) async fn wait_for_leader(&self, deadline: Instant) -> Result<NodeId, BrokerError> {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if let Some(l) = m.current_leader {
                    return Ok(l);
                }
                if m.membership_config
                    .membership()
                    .get_node(&self.id)
                    .is_none()
                {
                    return Err(BrokerError::Unavailable(format!(
                        "node {} is not a member of a cluster yet: add it with Admin.AddNode on a cluster member",
                        self.id
                    )));
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(BrokerError::Unavailable("raft is shutting down".into())),
                Err(_) => {
                    return Err(BrokerError::Unavailable(format!(
                        "no leader within {:?}: is a majority of the cluster up, and is node {} a member?",
                        self.request_timeout, self.id
                    )))
                }
            }
        }
    }

    /// Proposes a command and returns its outcome once it is committed and applied.
    /// Followers forward it to the leader.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, BrokerError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let leader = self.wait_for_leader(deadline).await?;
            let attempt = if leader == self.id {
                self.propose_local(cmd.clone(), deadline).await
            } else {
                self.forward(leader, &cmd, deadline).await
            };
            match attempt {
                Ok(reply) => return reply.map_err(BrokerError::Core),
                Err(ProposeError::NotLeader) => {
                    // Not proposed anywhere: safe to retry once leadership settles.
                    if Instant::now() >= deadline {
                        return Err(BrokerError::Unavailable(
                            "leadership kept changing; retry".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(ProposeError::Unavailable(msg)) => return Err(BrokerError::Unavailable(msg)),
            }
        }
    }

    /// Proposes on this node, which believes it leads (batched with concurrent
    /// proposals, see `proposer.rs`).
    pub async fn propose_local(
        &self,
        cmd: Command,
        deadline: Instant,
    ) -> Result<Reply, ProposeError> {
        self.warm_up_time().await;
        self.proposer.propose(cmd, deadline).await
    }

    /// Forwards to the leader on the follower's stream to it (`forward.rs`), or with a
    /// unary `Propose` to a leader that does not serve the stream.
    async fn forward(
        &self,
        leader: NodeId,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<Reply, ProposeError> {
        let addr = self.node_addr(leader).ok_or(ProposeError::NotLeader)?;
        match self.forwarder.forward(leader, &addr, cmd, deadline).await {
            Ok(reply) => reply,
            Err(Some(not_sent)) => Err(not_sent),
            Err(None) => self.forward_unary(leader, &addr, cmd, deadline).await,
        }
    }

    async fn forward_unary(
        &self,
        leader: NodeId,
        addr: &str,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<Reply, ProposeError> {
        let mut client = self
            .pool
            .client(addr)
            .map_err(|_| ProposeError::NotLeader)?;
        let data = encode(cmd).map_err(|e| ProposeError::Unavailable(e.to_string()))?;
        let mut req = tonic::Request::new(RaftMessage { data: data.into() });
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let reply = client.propose(req).await.map_err(|s| {
            if never_sent(&s) {
                // The leader is gone and nothing was sent: wait for the next one.
                ProposeError::NotLeader
            } else {
                ProposeError::Unavailable(format!(
                    "forwarding to leader {leader} at {addr} failed: {}; the write may or may not have applied",
                    s.message()
                ))
            }
        })?;
        decode::<Result<Reply, ProposeError>>(&reply.into_inner().data)
            .map_err(|e| ProposeError::Unavailable(e.to_string()))?
    }
}
