//! Retention: finished jobs are removed once their TTL passes, idempotency keys once
//! their dedup window passes, idle workers after a while. Bounded per entry so that
//! expiring a million jobs costs many small applies rather than one long one.

use super::state::State;
use super::tables::{Tables, Timer};

impl<T: Tables> State<T> {
    /// Removes up to `budget` expired jobs (and as many dedup keys and idle workers);
    /// returns how many jobs were removed.
    pub(crate) fn sweep_retention(&mut self, budget: usize) -> usize {
        let now = self.c.now_ms;
        let expired = self.t.timers_due(Timer::Expiring, now, budget);
        for &(_, seq) in &expired {
            self.remove(seq);
        }
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
        expired.len()
    }
}
