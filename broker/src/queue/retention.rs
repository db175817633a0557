//! Retention: finished jobs are removed once their TTL passes, idempotency keys once
//! their dedup window passes, idle workers after a while. Bounded per entry so that
//! expiring a million jobs costs many small applies rather than one long one.

use super::state::State;

impl State {
    /// Removes up to `budget` expired jobs (and as many dedup keys); returns how many
    /// jobs were removed.
    pub(crate) fn sweep_retention(&mut self, budget: usize) -> usize {
        let now = self.now_ms;
        let mut removed = 0;
        while removed < budget {
            match self.expiring.first() {
                Some(&(t, seq)) if t <= now => {
                    self.remove(seq);
                    removed += 1;
                }
                _ => break,
            }
        }
        for _ in 0..budget {
            match self.dedup_expiry.first() {
                Some((t, _, _)) if *t <= now => {
                    let (_, queue, key) = self.dedup_expiry.pop_first().expect("peeked");
                    self.dedup.remove(&(queue, key));
                }
                _ => break,
            }
        }
        self.workers
            .retain(|_, w| w.jobs_in_hand > 0 || w.forget_at_ms() > now);
        removed
    }
}
