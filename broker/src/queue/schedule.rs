//! Time passing: due scheduled jobs become ready, expired leases are redelivered (or
//! the job dies), and retention runs. Called at the start of every apply with the
//! entry's leader time, so "time" only moves with the log.

use super::job::JobState;
use super::state::{State, MAX_TIME_MOVES_PER_ENTRY};

impl State {
    /// Moves everything whose time has come, at most [`MAX_TIME_MOVES_PER_ENTRY`] jobs
    /// per kind of move.
    pub(crate) fn advance(&mut self) {
        let now = self.now_ms;
        for _ in 0..MAX_TIME_MOVES_PER_ENTRY {
            match self.scheduled.first() {
                Some(&(t, seq)) if t <= now => self.set_state(seq, JobState::Ready),
                _ => break,
            }
        }
        for _ in 0..MAX_TIME_MOVES_PER_ENTRY {
            match self.leases.first() {
                Some(&(t, seq)) if t <= now => self.expire_lease(seq),
                _ => break,
            }
        }
        self.sweep_retention(MAX_TIME_MOVES_PER_ENTRY);
    }
}
