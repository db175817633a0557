//! A new leader asks its peers where replicated time stands before it stamps its first
//! entry of the term, and continues from the latest answer if that is ahead of its own
//! estimate. A node restarted and elected before the old leader's entries reached it
//! knows no time at all (its own wall clock, two hours off perhaps, must not become the
//! cluster's); one that caught up on entries after a restart knows a time that lags by
//! how long those entries took to reach it (see `raft/time.rs`).

use std::sync::atomic::Ordering;

use super::*;

/// How long a new leader that knows no time waits for its peers' answers.
const ASK_COLD: Duration = Duration::from_secs(1);
/// How long one that knows a time waits (it only moves up if a peer knows better).
const ASK_WARM: Duration = Duration::from_millis(300);

impl RaftNode {
    /// Replicated time as this node has seen it live, if it has: what `ClusterTime`
    /// answers a peer.
    pub fn known_time_ms(&self) -> Option<u64> {
        self.time.known_ms()
    }

    /// Settles replicated time once per term before this leader stamps an entry: asks
    /// every other member at once and hands the latest answer to
    /// [`ReplicatedTime::warm_up`].
    pub(super) async fn warm_up_time(&self) {
        let term = self.raft.metrics().borrow().current_term;
        if self.warmed_term.load(Ordering::Acquire) == term {
            return;
        }
        let _one_at_a_time = self.warming.lock().await;
        if self.warmed_term.load(Ordering::Acquire) == term {
            return;
        }
        let wait = if self.time.is_cold() {
            ASK_COLD
        } else {
            ASK_WARM
        };
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
            req.set_timeout(wait);
            let reply = tokio::time::timeout(wait, client.cluster_time(req))
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
        self.warmed_term.store(term, Ordering::Release);
    }
}
