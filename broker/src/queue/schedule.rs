//! Time passing: due scheduled jobs become ready, expired leases are redelivered (or
//! the job dies), and retention runs. Called at the start of every apply with the
//! entry's leader time, so "time" only moves with the log.

use super::job::JobState;
use super::state::{State, MAX_TIME_MOVES_PER_ENTRY};
use super::tables::{Tables, Timer};

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
