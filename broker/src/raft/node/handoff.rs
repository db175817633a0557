//! Leadership hand-off on a graceful stop: choosing the successor, and the successor's
//! campaign.

use super::*;

impl RaftNode {
    /// The leader lease of this cluster: followers refuse to vote for this long after
    /// they last heard from a leader (openraft's `election_timeout_max`).
    pub fn leader_lease(&self) -> Duration {
        self.heartbeat * 8
    }

    /// On a leader: the voter whose log is furthest along (lowest id on a tie), with its
    /// address, to hand leadership to; waits up to `within` for one that has the whole
    /// log. None on a follower or a one-voter cluster.
    pub async fn successor(&self, within: Duration) -> Option<(NodeId, String)> {
        let deadline = Instant::now() + within;
        let mut rx = self.raft.metrics();
        loop {
            let best = {
                let m = rx.borrow_and_update();
                if m.state != ServerState::Leader {
                    return None;
                }
                let last = m.last_log_index.unwrap_or(0);
                let membership = m.membership_config.membership();
                let best = m
                    .replication
                    .as_ref()?
                    .iter()
                    .filter(|(id, _)| **id != self.id && membership.voter_ids().any(|v| v == **id))
                    .map(|(id, matched)| (matched.map_or(0, |l| l.index), *id))
                    .max_by_key(|(matched, id)| (*matched, std::cmp::Reverse(*id)))?;
                let addr = membership.get_node(&best.1)?.addr.clone();
                (best.0, last, best.1, addr)
            };
            let (matched, last, id, addr) = best;
            if matched >= last
                || tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .map_or(true, |r| r.is_err())
            {
                return Some((id, addr));
            }
        }
    }

    /// Asks node `to` (at `addr`) to campaign now that this leader stops. Called after
    /// this node's Raft has shut down, so no heartbeat renews the followers' lease.
    pub async fn hand_off(&self, to: NodeId, addr: &str) -> Result<(), String> {
        // The membership holds `CLIENT/PEER`: Campaign is a peer call.
        let mut client = self.pool.client(&MemberAddr::peer_of(addr))?;
        let data = encode(&self.id).map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(RaftMessage { data: data.into() });
        req.set_timeout(Duration::from_secs(1));
        client
            .campaign(req)
            .await
            .map_err(|s| format!("asking node {to} at {addr} to campaign: {}", s.message()))?;
        Ok(())
    }

    /// Leadership hand-off, on the follower: `old_leader` has stopped. openraft 0.9 has
    /// no transfer call, and voters refuse a candidate for a leader lease (8 heartbeats)
    /// after they last heard from the leader. So this node waits out most of that
    /// lease, then starts an election every half heartbeat until some other leader is
    /// known or it leads: it wins as soon as the lease runs out (its log is complete:
    /// the old leader chose it for that), instead of after the lease plus a random
    /// election timeout (4-8 heartbeats more).
    pub async fn campaign(self: Arc<Self>, old_leader: NodeId) {
        let deadline = Instant::now() + self.leader_lease() * 3;
        tracing::info!(
            node_id = self.id,
            old_leader,
            "leader is stopping: campaigning to take over"
        );
        // The voters' lease began at the old leader's last heartbeat, shortly before this
        // request: no election can succeed before about a lease minus a heartbeat.
        tokio::time::sleep(self.leader_lease().saturating_sub(self.heartbeat)).await;
        let mut elections = 0u32;
        while Instant::now() < deadline {
            {
                let m = self.raft.metrics();
                let m = m.borrow();
                if m.state == ServerState::Leader
                    || m.current_leader.is_some_and(|l| l != old_leader)
                {
                    tracing::info!(
                        node_id = self.id,
                        leader = ?m.current_leader,
                        elections,
                        "leadership handed off"
                    );
                    return;
                }
            }
            if self.raft.trigger().elect().await.is_err() {
                return;
            }
            elections += 1;
            tokio::time::sleep(self.heartbeat / 2).await;
        }
        tracing::warn!(
            node_id = self.id,
            "hand-off: not elected in time; the cluster elects as usual"
        );
    }
}
