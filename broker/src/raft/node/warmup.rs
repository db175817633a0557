//! A leader that has not seen the cluster's time since it started (restarted, and
//! elected before the old leader's entries reached it) asks its peers where replicated
//! time stands before it stamps anything: otherwise its own wall clock, two hours off
//! perhaps, would become the cluster's time (see `raft/time.rs`).

use super::*;

/// How long a cold leader waits for its peers' answers.
const ASK_FOR: Duration = Duration::from_secs(1);

impl RaftNode {
    /// Replicated time as this node has seen it live, if it has: what `ClusterTime`
    /// answers a peer.
    pub fn known_time_ms(&self) -> Option<u64> {
        self.time.known_ms()
    }

    /// Anchors replicated time before this leader stamps an entry: a no-op once it is
    /// (the usual case); else asks every other member at once and continues from the
    /// latest time any of them knows, or from the cold rule when none does.
    pub(super) async fn warm_up_time(&self) {
        if !self.time.is_cold() {
            return;
        }
        let _one_at_a_time = self.warming.lock().await;
        if !self.time.is_cold() {
            return;
        }
        let peers: Vec<String> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.id)
                .map(|(_, n)| MemberAddr::peer_of(&n.addr))
                .collect()
        };
        let asks = peers.iter().map(|addr| async move {
            let mut client = self.pool.client(addr).ok()?;
            let mut req = tonic::Request::new(RaftMessage::default());
            req.set_timeout(ASK_FOR);
            let reply = tokio::time::timeout(ASK_FOR, client.cluster_time(req))
                .await
                .ok()?
                .ok()?;
            decode::<Option<u64>>(&reply.into_inner().data)
                .ok()
                .flatten()
        });
        let known = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .max();
        self.time.warm_up(known);
    }
}
