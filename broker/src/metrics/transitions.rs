//! The core's job transitions, counted: per-queue counters, the wait histogram, and the
//! processing histogram, which needs to know when each lease began, so that its ack or
//! nack can record the time in hand.
//!
//! Every node applies every entry, so each node counts the whole cluster's jobs; lease
//! times are replicated time, the same on every node.

use crate::queue::{Transition, TransitionKind};

use super::*;

/// Leases held longer than this are forgotten by the processing histogram (a lease
/// lasts at most 12 h unless extended), which bounds the map when an ending is never
/// seen (a snapshot installed over it).
const LEASE_FORGET_MS: u64 = 13 * 3600 * 1000;

/// A lease seen begun and not yet seen ended.
pub(super) struct LeaseStart {
    pub(super) at_ms: u64,
    pub(super) queue: Arc<QueueCounters>,
}

impl Metrics {
    /// Counts one applied batch's transitions, in order.
    pub fn observe(&self, transitions: &[Transition]) {
        let Some(inner) = &self.inner else { return };
        let mut leases = lock(&inner.leases);
        // Batches are mostly one queue's jobs: look each name up once in a row.
        let mut last: Option<Arc<QueueCounters>> = None;
        for t in transitions {
            let q = match &last {
                Some(q) if q.queue() == t.queue => q.clone(),
                _ => {
                    let Some(q) = self.queue(&t.queue) else {
                        return;
                    };
                    last = Some(q.clone());
                    q
                }
            };
            let add = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
            match t.kind {
                TransitionKind::Enqueued => {
                    add(&q.enqueued);
                }
                TransitionKind::Leased {
                    lease_id,
                    waited_ms,
                } => {
                    add(&q.leased);
                    inner.wait.record(waited_ms as f64 / 1000.0, &q.attr);
                    leases.insert(
                        lease_id,
                        LeaseStart {
                            at_ms: t.at_ms,
                            queue: q,
                        },
                    );
                }
                TransitionKind::Acked { lease_id } | TransitionKind::Nacked { lease_id, .. } => {
                    add(if matches!(t.kind, TransitionKind::Acked { .. }) {
                        &q.acked
                    } else {
                        &q.nacked
                    });
                    if let Some(s) = leases.remove(&lease_id) {
                        let held = t.at_ms.saturating_sub(s.at_ms) as f64 / 1000.0;
                        inner.processing.record(held, &s.queue.attr);
                    }
                }
                TransitionKind::Expired { lease_id, .. } => {
                    add(&q.expired);
                    leases.remove(&lease_id);
                }
                TransitionKind::DeadLettered => {
                    add(&q.dead_lettered);
                }
                TransitionKind::Released { .. } | TransitionKind::Cancelled { .. } => {
                    if let Some(id) = t.kind.ended_lease() {
                        leases.remove(&id);
                    }
                }
                TransitionKind::Revived | TransitionKind::Removed => {}
            }
        }
        if let Some(t) = transitions.last() {
            inner.latest_ms.fetch_max(t.at_ms, Ordering::Relaxed);
        }
    }

    /// Forgets lease starts older than [`LEASE_FORGET_MS`] of replicated time.
    pub(super) fn forget_old_leases(&self) {
        let Some(inner) = &self.inner else { return };
        let now = inner.latest_ms.load(Ordering::Relaxed);
        lock(&inner.leases).retain(|_, s| now.saturating_sub(s.at_ms) < LEASE_FORGET_MS);
    }
}
