//! Replicated time: the `now_ms` the leader stamps into each entry, which decides when
//! leases run out, delayed jobs become due and results expire.
//!
//! Wall clocks step (NTP corrections, a VM resumed after hours, an operator's typo) and
//! disagree between machines. Replicated time must do neither, or a leader whose clock
//! runs two hours ahead expires every live lease the moment it is elected (a double
//! delivery) and runs delayed jobs early, and one two hours behind freezes time. So:
//!
//! - **Time advances by the monotonic clock.** The leader continues from an *anchor*
//!   (a replicated time and the monotonic instant it was seen at) by the monotonic
//!   time elapsed since. A wall-clock step moves nothing.
//! - **A new leader continues from the last replicated time.** Every node anchors on the
//!   entries it applies, so the one elected next already knows where time stood and
//!   continues from there (from slightly behind: an entry is applied after it was
//!   stamped, so leases end a few milliseconds late rather than early).
//! - **The wall clock is slewed in slowly.** The difference between the leader's wall
//!   clock and replicated time (the *skew*) is corrected at most [`SLEW_PPM`] (500
//!   ppm, NTP's own limit: 0.5 ms per second) in either direction. Time never runs
//!   backwards and never stands still: behind the wall clock it runs 0.05 % fast, ahead
//!   of it 0.05 % slow. A node whose clock is two hours off thus moves a 10-minute lease
//!   by 0.3 s, not by two hours. The skew is reported (`taskraft_clock_skew_seconds`,
//!   and a warning in the log while it exceeds [`WARN_SKEW_MS`]).
//! - **A new leader asks its peers first.** Before it stamps the first entry of its
//!   term it asks them where replicated time stands (`ClusterTime` on the peer service)
//!   and moves up to the latest answer if that is ahead of its own estimate. A node
//!   restarted alone and elected before the old leader's entries reached it (a
//!   restarted leader with a complete log often is, within a few hundred ms) knows no
//!   time at all, whatever its wall clock says; one that caught up on entries after a
//!   restart anchored on times older than the moment they reached it, and lags by that
//!   much. Leases it granted on that lagging time would otherwise end early once a
//!   better-informed leader took over.
//! - **After the whole cluster restarted**, no node knows how long it was down: the
//!   entries in its log were written before it started, and no peer has a live time
//!   to give. Then the first leader takes `max(last replicated time, its wall clock)`:
//!   downtime counts as its wall clock says, time never goes back, and from its first
//!   entry on the rules above hold. (If that leader's clock is off, so is the jump.)
//!
//! What a user's `run_at_ms` means follows: it is compared with replicated time, which
//! is the leader's wall clock as long as clocks agree, and otherwise drifts towards it
//! at 0.05 %. With clocks that disagree by more than the slew has absorbed, a job runs
//! at `run_at_ms` by the cluster's time, which `taskraft_clock_skew_seconds` shows.

use std::sync::Mutex;

use tokio::time::Instant;

use crate::clock::ClockHandle;

/// Largest correction of replicated time towards the wall clock, in parts per
/// million of elapsed time.
pub const SLEW_PPM: u64 = 500;

/// Skew beyond which a leader warns in its log (at most every [`WARN_EVERY`]).
pub const WARN_SKEW_MS: u64 = 1_000;

const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

const NS_PER_MS: u64 = 1_000_000;

/// The node's view of replicated time (see the module docs).
pub struct ReplicatedTime {
    clock: ClockHandle,
    /// Entries above this index were appended while this process ran: applying one
    /// proves the cluster's time was live then.
    live_after: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Highest replicated time applied (ns).
    floor_ns: u64,
    /// Replicated time (ns) at a monotonic instant, once a live entry was applied.
    anchor: Option<(u64, Instant)>,
    warned: Option<Instant>,
}

impl ReplicatedTime {
    /// Time for a node whose stored state is at `stored_ms` and whose log ended at
    /// `live_after` when it started.
    pub fn new(clock: ClockHandle, stored_ms: u64, live_after: u64) -> Self {
        Self {
            clock,
            live_after,
            inner: Mutex::new(Inner {
                floor_ns: stored_ms.saturating_mul(NS_PER_MS),
                anchor: None,
                warned: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the entries up to `index` applied, the latest stamped `now_ms`.
    pub fn observe(&self, index: u64, now_ms: u64) {
        let m = self.clock.mono();
        let t = now_ms.saturating_mul(NS_PER_MS);
        let mut i = self.lock();
        i.floor_ns = i.floor_ns.max(t);
        if index > self.live_after {
            let carried = i.anchor.map_or(0, |(t0, m0)| t0 + elapsed_ns(m0, m));
            i.anchor = Some((carried.max(t), m));
        }
    }

    /// The time for the entry this leader is about to propose (ms). Successive calls
    /// never decrease.
    pub fn stamp(&self) -> u64 {
        let (m, wall) = (self.clock.mono(), self.clock.wall_ms());
        let mut i = self.lock();
        let t = match i.anchor {
            Some((t0, m0)) => {
                let dt = elapsed_ns(m0, m);
                let base = t0 + dt;
                let limit = dt / (1_000_000 / SLEW_PPM);
                let wall_ns = wall.saturating_mul(NS_PER_MS);
                let corrected = if wall_ns > base {
                    base + (wall_ns - base).min(limit)
                } else {
                    base - (base - wall_ns).min(limit)
                };
                let t = corrected.max(i.floor_ns);
                // The slewed time becomes the anchor, so corrections accumulate.
                i.anchor = Some((t, m));
                t
            }
            // Not warmed up (see `warm_up`, which a leader runs before proposing): the
            // cold rule. Not anchored here: the anchor comes from this entry once it
            // applies.
            None => i.floor_ns.max(wall.saturating_mul(NS_PER_MS)),
        };
        self.note_skew(&mut i, wall, t, m);
        t / NS_PER_MS
    }

    /// This node's best estimate of replicated time now (ms), for decisions outside
    /// the log: whether a tick is due, which webhooks to send, validation horizons.
    /// Does not move the anchor; a cold node estimates by the cold rule.
    pub fn now_ms(&self) -> u64 {
        self.known_ms().unwrap_or_else(|| {
            let floor_ms = self.lock().floor_ns / NS_PER_MS;
            floor_ms.max(self.clock.wall_ms())
        })
    }

    /// True until this node has seen the cluster's time live: it applied no entry
    /// written since it started, and took no time from its peers.
    pub fn is_cold(&self) -> bool {
        self.lock().anchor.is_none()
    }

    /// Replicated time now (ms) if this node has seen it live; None while cold. What
    /// a cold new leader asks its peers for.
    pub fn known_ms(&self) -> Option<u64> {
        let m = self.clock.mono();
        let i = self.lock();
        i.anchor
            .map(|(t0, m0)| (t0 + elapsed_ns(m0, m)).max(i.floor_ns) / NS_PER_MS)
    }

    /// Settles replicated time before a new leader stamps its first entry, with
    /// `peers_ms`, the latest time any peer knows. A node that has seen the cluster's
    /// time moves up to it if its own estimate is behind (its anchor came from entries
    /// it caught up on after a restart, written earlier than they reached it); a cold
    /// one takes it, or, when no peer knows one (the whole cluster restarted), its own
    /// wall clock. Never below the last replicated time, never backwards.
    pub fn warm_up(&self, peers_ms: Option<u64>) {
        let (m, wall) = (self.clock.mono(), self.clock.wall_ms());
        let mut i = self.lock();
        if let Some((t0, m0)) = i.anchor {
            let own = t0 + elapsed_ns(m0, m);
            if let Some(p) = peers_ms.map(|p| p.saturating_mul(NS_PER_MS)) {
                if p > own {
                    tracing::info!(
                        behind_ms = (p - own) / NS_PER_MS,
                        "taking over leadership: moved up to the time its peers know"
                    );
                    i.anchor = Some((p, m));
                }
            }
            return;
        }
        let floor_ms = i.floor_ns / NS_PER_MS;
        let t = match peers_ms {
            Some(p) => {
                tracing::info!(
                    replicated_ms = p.max(floor_ms),
                    skew_ms = wall as i64 - p as i64,
                    "elected before seeing the cluster's time: continuing from the time its peers know"
                );
                p.max(floor_ms)
            }
            None => {
                tracing::info!(
                    replicated_ms = floor_ms,
                    wall_ms = wall,
                    "no peer knows the cluster's time (the whole cluster restarted): resuming from \
                     this node's wall clock, never below the last replicated time"
                );
                wall.max(floor_ms)
            }
        };
        i.anchor = Some((t.saturating_mul(NS_PER_MS), m));
    }

    /// This node's wall clock minus its estimate of replicated time now (ms; positive:
    /// the wall clock is ahead). Live on every node, leader or not.
    pub fn skew_ms(&self) -> i64 {
        self.clock.wall_ms() as i64 - self.now_ms() as i64
    }

    fn note_skew(&self, i: &mut Inner, wall_ms: u64, t_ns: u64, m: Instant) {
        let skew = wall_ms as i64 - (t_ns / NS_PER_MS) as i64;
        if skew.unsigned_abs() < WARN_SKEW_MS {
            i.warned = None;
            return;
        }
        if i.warned
            .is_some_and(|w| m.saturating_duration_since(w) < WARN_EVERY)
        {
            return;
        }
        i.warned = Some(m);
        tracing::warn!(
            skew_ms = skew,
            wall_ms,
            replicated_ms = t_ns / NS_PER_MS,
            "this leader's wall clock differs from replicated time; replicated time keeps \
             its monotonic pace and is slewed towards the wall clock at 0.05 % (check NTP)"
        );
    }
}

fn elapsed_ns(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SteppableClock;
    use std::time::Duration;

    const H2: i64 = 2 * 3600 * 1000;

    fn warm(clock: &SteppableClock) -> ReplicatedTime {
        let t = ReplicatedTime::new(clock.handle(), 0, 10);
        let now = t.stamp();
        t.observe(11, now);
        t
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_step_moves_nothing_but_the_slew() {
        for step in [H2, -H2] {
            let clock = SteppableClock::new();
            let t = warm(&clock);
            let start = t.stamp();
            clock.step(step);
            tokio::time::advance(Duration::from_secs(10)).await;
            let after = t.stamp();
            // 10 s of monotonic time, corrected by at most 500 ppm (5 ms).
            let moved = after as i64 - start as i64;
            assert!(
                (9_995..=10_005).contains(&moved),
                "step {step}: moved {moved}"
            );
            assert_eq!(t.skew_ms().signum(), step.signum());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn time_never_stands_still_nor_runs_back() {
        let clock = SteppableClock::new();
        let t = warm(&clock);
        clock.step(-H2);
        let mut last = t.stamp();
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let now = t.stamp();
            assert!(now >= last + 99, "{now} after {last}");
            last = now;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_leader_continues_from_the_last_replicated_time() {
        // A follower whose wall clock is 2 h ahead applies the old leader's entries.
        let clock = SteppableClock::new();
        clock.step(H2);
        let t = ReplicatedTime::new(clock.handle(), 0, 5);
        let leader_time = crate::clock::system_wall_ms();
        t.observe(6, leader_time);
        tokio::time::advance(Duration::from_secs(3)).await;
        // Elected: it continues from there, not from its own clock.
        let first = t.stamp();
        assert!(
            (leader_time + 2_999..=leader_time + 3_010).contains(&first),
            "{first} vs {leader_time}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn replayed_entries_are_no_anchor_and_a_cold_cluster_takes_the_wall_clock() {
        let clock = SteppableClock::new();
        let t = ReplicatedTime::new(clock.handle(), 1_000, 50);
        // Replayed from the log written before this start: it only raises the floor.
        t.observe(40, 2_000);
        let wall = clock.handle().wall_ms();
        assert!(t.stamp() >= wall);
        // A node whose clock is behind the stored time resumes from the stored time.
        let behind = SteppableClock::new();
        let stored = crate::clock::system_wall_ms() + H2 as u64;
        let t = ReplicatedTime::new(behind.handle(), stored, 0);
        assert_eq!(t.stamp(), stored);
        t.observe(1, stored);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(t.stamp() >= stored + 2_998, "time froze");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_leader_continues_from_its_peers_time_not_its_wall_clock() {
        // Restarted 2 h ahead and elected before any live entry reached it.
        let clock = SteppableClock::new();
        clock.step(H2);
        let cluster_now = crate::clock::system_wall_ms();
        let t = ReplicatedTime::new(clock.handle(), cluster_now - 5_000, 50);
        assert!(t.is_cold());
        assert_eq!(t.known_ms(), None, "a cold node tells its peers nothing");
        t.warm_up(Some(cluster_now));
        assert!(!t.is_cold());
        let first = t.stamp();
        assert!(first.abs_diff(cluster_now) < 10, "{first} vs {cluster_now}");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(t.stamp().abs_diff(cluster_now + 2_000) < 10);
        assert!(t.known_ms().is_some());
        // Restarted 2 h behind: it does not freeze at the last replicated time either.
        let behind = SteppableClock::new();
        behind.step(-H2);
        let t = ReplicatedTime::new(behind.handle(), cluster_now - 5_000, 50);
        t.warm_up(Some(cluster_now));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(t.stamp().abs_diff(cluster_now + 3_000) < 10);
        // A node that knows a time moves up to its peers' if it lags, never down.
        let t = warm(&SteppableClock::new());
        let own = t.stamp();
        t.warm_up(Some(own + 3_000));
        assert!(t.stamp().abs_diff(own + 3_000) < 10, "moved up");
        t.warm_up(Some(own - 60_000));
        assert!(t.stamp() >= own + 3_000, "never down");
        // No peer knows (the whole cluster restarted): the wall clock, never below the
        // last replicated time.
        let t = ReplicatedTime::new(SteppableClock::new().handle(), cluster_now + 60_000, 50);
        t.warm_up(None);
        assert_eq!(t.stamp(), cluster_now + 60_000);
    }

    #[tokio::test(start_paused = true)]
    async fn slew_closes_the_gap_at_500_ppm() {
        let clock = SteppableClock::new();
        let t = warm(&clock);
        clock.step(1_000);
        for _ in 0..1_000 {
            tokio::time::advance(Duration::from_secs(1)).await;
            t.stamp();
        }
        // 1,000 s at 0.5 ms/s closed half the 1 s gap.
        let skew = t.skew_ms();
        assert!((495..=505).contains(&skew), "skew {skew}");
    }
}
