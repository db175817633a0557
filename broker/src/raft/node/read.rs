//! Linearizable reads: a read barrier (the leader's read index, asked over the peer
//! service on a follower), then waiting until this node applied that far.

use super::*;

impl RaftNode {
    /// Returns once this node's applied state includes every write committed before the
    /// call (a linearizable read barrier). Followers ask the leader for its read index.
    pub async fn read_barrier(&self) -> Result<(), BrokerError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let leader = self.wait_for_leader(deadline).await?;
            let index = if leader == self.id {
                self.leader_read_index(deadline).await
            } else {
                self.remote_read_index(leader, deadline).await
            };
            match index {
                Ok(index) => return self.wait_applied(index, deadline).await,
                Err(ProposeError::NotLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(ProposeError::NotLeader) => {
                    return Err(BrokerError::Unavailable(
                        "leadership kept changing; retry".into(),
                    ))
                }
                Err(ProposeError::Unavailable(m)) => return Err(BrokerError::Unavailable(m)),
            }
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the index a read
    /// must observe.
    ///
    /// openraft's read index is the later of the committed index and the leader's first
    /// entry of its term. A leader that restarts may retake leadership in its old term
    /// (openraft 0.9 restores it at startup) with a committed index read from disk, and
    /// that pointer is written lazily (`LogStore::save_committed`): it can lag writes
    /// that were acknowledged before the crash. Every acknowledged write is in the log
    /// it opened, so in the term it restarted in, a read waits for the log's last index
    /// at start as well. A later term has a first entry of its own after all of it.
    pub async fn leader_read_index(&self, deadline: Instant) -> Result<u64, ProposeError> {
        // The term before the check: leadership is confirmed in this term or a later one.
        let term = self.raft.metrics().borrow().current_term;
        let (open_term, open_last) = self.restart_floor;
        let floor = if term == open_term { open_last } else { 0 };
        match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
            Ok(Ok(log_id)) => Ok(log_id.map_or(0, |l| l.index).max(floor)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(ProposeError::NotLeader)
            }
            Ok(Err(e)) => Err(ProposeError::Unavailable(format!(
                "read barrier failed: {e}"
            ))),
            Err(_) => Err(ProposeError::Unavailable(
                "leader could not confirm a quorum in time".into(),
            )),
        }
    }

    async fn remote_read_index(
        &self,
        leader: NodeId,
        deadline: Instant,
    ) -> Result<u64, ProposeError> {
        let addr = self.node_addr(leader).ok_or(ProposeError::NotLeader)?;
        let mut client = self
            .pool
            .client(&addr)
            .map_err(|_| ProposeError::NotLeader)?;
        let mut req = tonic::Request::new(RaftMessage::default());
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let reply = client.read_index(req).await.map_err(|s| {
            if never_sent(&s) {
                ProposeError::NotLeader
            } else {
                ProposeError::Unavailable(format!(
                    "read index from leader {leader} failed: {}",
                    s.message()
                ))
            }
        })?;
        decode::<Result<u64, ProposeError>>(&reply.into_inner().data)
            .map_err(|e| ProposeError::Unavailable(e.to_string()))?
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), BrokerError> {
        let mut rx = self.read_side.applied_index.subscribe();
        loop {
            if *rx.borrow_and_update() >= index {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(BrokerError::Unavailable(format!(
                        "node {} did not catch up to index {index} in time",
                        self.id
                    )))
                }
            }
        }
    }
}
