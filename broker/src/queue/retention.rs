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
        let mut removed = 0;
        let mut read = 0;
        'entries: while read < budget {
            let due = self.t.groups_due(Group::Expiring, now, 64);
            if due.is_empty() {
                break;
            }
            for (at, key, seqs) in due {
                read += seqs.len().max(1);
                for seq in seqs {
                    let Some(job) = self.t.job(seq) else { continue };
                    if job.state.is_terminal() && job.expires_at_ms <= now {
                        self.remove(job);
                        removed += 1;
                    }
                }
                self.t.group_remove(Group::Expiring, at, key);
                if read >= budget {
                    break 'entries;
                }
            }
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
        removed
    }
}
