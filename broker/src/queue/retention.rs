//! Retention: finished jobs are removed once their TTL passes, idempotency keys once
//! their dedup window passes, idle workers after a while. Bounded per entry so that
//! expiring a million jobs costs many small applies rather than one long one.

use super::state::State;
use super::tables::{Group, Tables};

impl<T: Tables> State<T> {
    /// Removes expired jobs, reading at most `budget` of them (whole expiry entries;
    /// their jobs may have been retried since), and up to `budget` dedup keys and idle
    /// workers; returns how many jobs were removed.
    pub(crate) fn sweep_retention(&mut self, budget: usize) -> usize {
        let now = self.c.now_ms;
        let removed = self.drain_due(Group::Expiring, budget, |s, job| {
            let due = job.state.is_terminal() && job.expires_at_ms <= now;
            if due {
                s.remove(job);
            }
            due
        });
        for _ in 0..budget {
            match self.t.dedup_expiry_first() {
                Some((t, queue, key)) if t <= now => self.t.delete_dedup(&queue, &key, t),
                _ => break,
            }
        }
        for _ in 0..budget {
            match self.t.idle_worker_first() {
                Some((t, id)) if t <= now => {
                    self.t.idle_worker_remove(t, &id);
                    self.t.delete_worker(&id);
                }
                _ => break,
            }
        }
        removed
    }
}
