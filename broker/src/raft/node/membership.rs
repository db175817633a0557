//! Membership changes: adding a node (learner first, voter once caught up) and
//! removing one.

use super::*;

impl RaftNode {
    /// Adds a node as a learner, waits for it to catch up, then makes it a voter.
    ///
    /// A node that is already a learner at the same address is not added again: every
    /// `add_learner` appends a membership entry, which restarts replication to it, so a
    /// caller retrying AddNode while a big snapshot is on its way would restart the
    /// transfer each time and the learner would never catch up. Instead the call waits
    /// (up to the request timeout) for it and answers UNAVAILABLE ("call again") if it
    /// is still behind.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<(), BrokerError> {
        let existing = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let is_learner = membership.learner_ids().any(|l| l == id);
            is_learner.then(|| membership.get_node(&id).map(|n| n.addr.clone()))
        };
        match existing {
            Some(Some(known)) if known == addr => self.wait_learner_caught_up(id).await?,
            _ => {
                let r = self.raft.add_learner(id, BasicNode::new(addr), true).await;
                self.membership_result(r)?;
            }
        }
        let r = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await;
        self.membership_result(r)
    }

    /// Waits until learner `id` has replicated the leader's log (within a few entries),
    /// for at most the request timeout.
    async fn wait_learner_caught_up(&self, id: NodeId) -> Result<(), BrokerError> {
        let deadline = Instant::now() + self.request_timeout;
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                let last = m.last_log_index.unwrap_or(0);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map_or(0, |l| l.index);
                if matched + 10 >= last {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(BrokerError::Unavailable(format!(
                    "node {id} is a learner still catching up (by snapshot or log); call AddNode again to wait for it"
                )));
            }
        }
    }

    /// Removes a node from the voters and the cluster in one membership change
    /// (`retain = false` drops it as a learner too).
    pub async fn remove_node(&self, id: NodeId) -> Result<(), BrokerError> {
        let is_voter = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let r = self.raft.change_membership(change, false).await;
        self.membership_result(r)
    }

    fn membership_result<T>(
        &self,
        r: Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
    ) -> Result<(), BrokerError> {
        match r {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(BrokerError::Unavailable(format!(
                    "node {} is not the leader (leader: {:?}); membership changes run on the leader",
                    self.id, f.leader_id
                )))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(BrokerError::FailedPrecondition(e.to_string()))
            }
            Err(e) => Err(BrokerError::Unavailable(e.to_string())),
        }
    }
}
