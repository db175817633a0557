//! The machine's clocks, behind a handle that tests can replace.
//!
//! The broker reads two clocks: the wall clock (Unix time, which NTP, an operator or a
//! VM resume may step by hours) and a monotonic clock (which only moves forward, at
//! the machine's rate). Which one is used for what is decided in
//! [`crate::raft::time`]; this module only makes them injectable, so that a test can
//! step a running leader's wall clock by two hours without touching the machine.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync {
    /// Unix time in milliseconds, as this machine's wall clock says (it may step).
    fn wall_ms(&self) -> u64;
    /// Monotonic time. tokio's `Instant`, so that tests with paused time drive it.
    fn mono(&self) -> Instant;
}

/// A shared [`Clock`]; the system's clocks by default.
#[derive(Clone)]
pub struct ClockHandle(Arc<dyn Clock>);

impl ClockHandle {
    /// Wraps `clock`.
    pub fn new(clock: impl Clock + 'static) -> Self {
        Self(Arc::new(clock))
    }

    /// The machine's clocks.
    pub fn system() -> Self {
        Self::new(SystemClock)
    }

    /// See [`Clock::wall_ms`].
    pub fn wall_ms(&self) -> u64 {
        self.0.wall_ms()
    }

    /// See [`Clock::mono`].
    pub fn mono(&self) -> Instant {
        self.0.mono()
    }
}

impl Default for ClockHandle {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for ClockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockHandle")
    }
}

/// The machine's wall clock and tokio's monotonic clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        system_wall_ms()
    }

    fn mono(&self) -> Instant {
        Instant::now()
    }
}

/// The machine's wall clock in Unix ms (0 before 1970).
pub fn system_wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A wall clock that can be stepped while the node runs, as an NTP step or a VM resume
/// would: for tests of what a clock step does. Between steps it advances with tokio's
/// monotonic clock (so with paused test time too), from the system's wall clock at
/// creation.
#[derive(Clone)]
pub struct SteppableClock {
    origin: (u64, Instant),
    offset_ms: Arc<AtomicI64>,
}

impl Default for SteppableClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SteppableClock {
    /// The system's wall clock, not stepped yet.
    pub fn new() -> Self {
        Self {
            origin: (system_wall_ms(), Instant::now()),
            offset_ms: Arc::default(),
        }
    }

    /// Steps the wall clock by `delta_ms` (negative: backwards).
    pub fn step(&self, delta_ms: i64) {
        self.offset_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    /// A handle to give a node (it shares this clock's offset).
    pub fn handle(&self) -> ClockHandle {
        ClockHandle::new(self.clone())
    }
}

impl Clock for SteppableClock {
    fn wall_ms(&self) -> u64 {
        let (wall, at) = self.origin;
        let elapsed = Instant::now().saturating_duration_since(at).as_millis() as u64;
        (wall + elapsed).saturating_add_signed(self.offset_ms.load(Ordering::SeqCst))
    }

    fn mono(&self) -> Instant {
        Instant::now()
    }
}
