//! Capped exponential backoff with jitter, for reconnecting.
//!
//! Attempt `k` (from 0) waits `min(initial * 2^k, max)`, less a random part of up to `jitter`
//! of it, so that nodes that lost the same broker do not all knock again at the same instant.

use std::time::Duration;

use rand::Rng;

/// How long to wait between connection attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// The fraction of each wait that is random, in `0.0..=1.0`: with `0.5`, a wait of
    /// nominal `d` lasts between `d/2` and `d`.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 100 ms doubling up to 5 s, half of it random.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The nominal wait before attempt `attempt + 1` (no jitter).
    pub fn nominal(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before attempt `attempt + 1`, with jitter drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let nominal = self.nominal(attempt);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return nominal;
        }
        let cut: f64 = rng.random_range(0.0..jitter);
        nominal.mul_f64(1.0 - cut)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn doubles_from_initial_up_to_the_cap() {
        let b = Backoff::default();
        let ms: Vec<u128> = (0..10).map(|a| b.nominal(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let b = Backoff::default();
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn no_jitter_is_exact() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(b.delay(2, &mut rng), Duration::from_millis(400));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..12 {
            let nominal = b.nominal(attempt);
            for _ in 0..50 {
                let d = b.delay(attempt, &mut rng);
                assert!(d <= nominal && d >= nominal / 2, "{d:?} vs {nominal:?}");
            }
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(3);
        let waits: std::collections::HashSet<Duration> =
            (0..20).map(|_| b.delay(5, &mut rng)).collect();
        assert!(waits.len() > 10);
    }
}
