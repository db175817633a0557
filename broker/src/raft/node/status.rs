//! What this node knows of the cluster, in the broker's own terms: the API, the
//! dashboard and the metrics read it without touching openraft's types.

use super::*;

/// A member's part in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leads.
    Leader,
    /// A voter that follows.
    Follower,
    /// Receives the log but does not vote (yet).
    Learner,
}

impl Role {
    /// The lowercase name the API and the dashboard show.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Learner => "learner",
        }
    }
}

/// One member of the cluster.
#[derive(Clone, Debug)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Client (gRPC) address.
    pub addr: String,
    /// Peer (Raft) address.
    pub peer_addr: String,
    /// Its role.
    pub role: Role,
    /// Highest log index the leader knows it holds (0 on a follower's view).
    pub matched_index: u64,
}

/// The cluster as this node sees it.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// This node.
    pub node_id: NodeId,
    /// The leader, if known.
    pub leader_id: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Every member, voters and learners.
    pub members: Vec<Member>,
    /// Last index in this node's log.
    pub last_log_index: u64,
    /// The commit index on the leader; on a follower its applied index (a lower bound).
    pub commit_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Index of the last snapshot, if any.
    pub snapshot_index: Option<u64>,
    /// Index up to which the log was purged.
    pub purged_index: u64,
}

impl ClusterView {
    /// Entries in the log after the last purge.
    pub fn log_entries(&self) -> u64 {
        self.last_log_index.saturating_sub(self.purged_index)
    }
}

/// Follows changes of what this node knows of the cluster.
pub struct ClusterChanges(tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>);

impl ClusterChanges {
    /// The leader as now known (and marks the current state seen).
    pub fn leader(&mut self) -> Option<NodeId> {
        self.0.borrow_and_update().current_leader
    }

    /// Waits for the next change; false once the node has stopped.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

impl RaftNode {
    /// The cluster as this node sees it now.
    pub fn cluster_view(&self) -> ClusterView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = |id: NodeId| -> u64 {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map_or(0, |l| l.index)
        };
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                addr: MemberAddr::client_of(&n.addr),
                peer_addr: MemberAddr::peer_of(&n.addr),
                role: if Some(*id) == m.current_leader {
                    Role::Leader
                } else if voters.contains(id) {
                    Role::Follower
                } else {
                    Role::Learner
                },
                matched_index: matched(*id),
            })
            .collect();
        let applied = m.last_applied.map_or(0, |l| l.index);
        // The leader knows the commit index as the highest index a majority of voters
        // hold; a follower reports what it has applied (a lower bound of the commit
        // index).
        let commit_index = match &m.replication {
            Some(rep) if m.current_leader == Some(m.id) => {
                let mut idx: Vec<u64> = voters
                    .iter()
                    .map(|id| {
                        if *id == m.id {
                            m.last_log_index.unwrap_or(0)
                        } else {
                            rep.get(id).cloned().flatten().map_or(0, |l| l.index)
                        }
                    })
                    .collect();
                idx.sort_unstable_by(|a, b| b.cmp(a));
                idx.get(voters.len() / 2)
                    .copied()
                    .unwrap_or(applied)
                    .max(applied)
            }
            _ => applied,
        };
        ClusterView {
            node_id: m.id,
            leader_id: m.current_leader,
            term: m.current_term,
            members,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index,
            applied_index: applied,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
        }
    }

    /// Follows leader changes (health reporting).
    pub fn cluster_changes(&self) -> ClusterChanges {
        ClusterChanges(self.raft.metrics())
    }
}
