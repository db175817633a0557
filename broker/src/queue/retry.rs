//! Retry delay after a `Nack`: exponential backoff with deterministic jitter.
//!
//! The jitter must be the same on every replica, so it is derived from the job's
//! sequence number and attempt instead of a random number generator.

use super::command::Backoff;

/// Delay before attempt `attempt + 1`, given that `attempt` deliveries happened:
/// `base × 2^(attempt-1)`, ±20 % jitter, capped at `max`.
pub fn backoff_delay_ms(policy: Backoff, attempt: u32, seq: u64) -> u64 {
    let exp = attempt.saturating_sub(1).min(40);
    let raw = policy.base_ms.saturating_mul(1u64 << exp);
    let capped = raw.min(policy.max_ms);
    // Jitter factor in [0.8, 1.2], from a hash of (seq, attempt).
    let h = splitmix64(seq ^ (u64::from(attempt) << 48));
    let permille = 800 + (h % 401); // 800..=1200
    let jittered = (u128::from(capped) * u128::from(permille) / 1000) as u64;
    jittered.min(policy.max_ms)
}

/// A small, good-enough 64-bit mixer (Steele et al.'s SplitMix64 finaliser).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Backoff = Backoff {
        base_ms: 1_000,
        max_ms: 3_600_000,
    };

    #[test]
    fn first_retry_waits_about_base_and_doubles_after() {
        for seq in 0..200 {
            let d1 = backoff_delay_ms(POLICY, 1, seq);
            let d2 = backoff_delay_ms(POLICY, 2, seq);
            let d5 = backoff_delay_ms(POLICY, 5, seq);
            assert!((800..=1200).contains(&d1), "attempt 1: {d1}");
            assert!((1600..=2400).contains(&d2), "attempt 2: {d2}");
            assert!((12_800..=19_200).contains(&d5), "attempt 5: {d5}");
        }
    }

    #[test]
    fn delay_is_capped_and_deterministic() {
        assert!(backoff_delay_ms(POLICY, 40, 7) <= POLICY.max_ms);
        assert_eq!(
            backoff_delay_ms(POLICY, 3, 9),
            backoff_delay_ms(POLICY, 3, 9)
        );
        let distinct: std::collections::BTreeSet<u64> =
            (0..50).map(|s| backoff_delay_ms(POLICY, 1, s)).collect();
        assert!(distinct.len() > 10, "jitter spreads retries");
    }
}
