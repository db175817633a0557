//! Time passing: due scheduled jobs become ready, expired leases are redelivered (or
//! the job dies), and retention runs. Called at the start of every apply with the
//! entry's leader time, so "time" only moves with the log.

use super::job::{Job, JobState};
use super::state::{State, MAX_TIME_MOVES_PER_ENTRY};
use super::tables::{Group, Tables, Timer};

impl<T: Tables> State<T> {
    /// Moves everything whose time has come, at most [`MAX_TIME_MOVES_PER_ENTRY`] jobs
    /// per kind of move.
    pub(crate) fn advance(&mut self) {
        let now = self.c.now_ms;
        for (_, seq) in self
            .t
            .timers_due(Timer::Scheduled, now, MAX_TIME_MOVES_PER_ENTRY)
        {
            let mut job = self.record(seq);
            self.set_state(&mut job, JobState::Ready);
        }
        self.expire_leases(MAX_TIME_MOVES_PER_ENTRY);
        self.sweep_retention(MAX_TIME_MOVES_PER_ENTRY);
    }
}

impl<T: Tables> State<T> {
    /// Visits the jobs of `group`'s entries due now, reading at most `budget` jobs
    /// (whole entries), and removes those entries. An entry is never updated when one
    /// of its jobs moves on, so `act` decides from the job's own record and says
    /// whether it moved the job. Returns how many it moved.
    pub(crate) fn drain_due(
        &mut self,
        group: Group,
        budget: usize,
        act: impl Fn(&mut Self, Job) -> bool,
    ) -> usize {
        let now = self.c.now_ms;
        let (mut read, mut moved) = (0, 0);
        while read < budget {
            let due = self.t.groups_due(group, now, 64);
            if due.is_empty() {
                break;
            }
            for (at, key, seqs) in due {
                read += seqs.len().max(1);
                for seq in seqs {
                    if let Some(job) = self.t.job(seq) {
                        moved += usize::from(act(self, job));
                    }
                }
                self.t.group_remove(group, at, key);
                if read >= budget {
                    return moved;
                }
            }
        }
        moved
    }
}
