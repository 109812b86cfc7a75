//! Jittered exponential backoff, drawn from the engine's seeded RNG.

use std::time::Duration;

use rand::Rng;

/// `delay(n) = min(base · 2ⁿ, max) · (1 − jitter · u)`, `u` uniform in [0, 1): the shape the
/// OpenAI SDK uses (facts §3), with every constant configurable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry, before jitter.
    pub base: Duration,
    /// Cap on the delay, before jitter.
    pub max: Duration,
    /// Largest cut jitter takes off a delay, percent (0–100).
    pub jitter_percent: u8,
}

impl Backoff {
    /// The delay before retry number `retries_taken + 1`.
    pub fn delay(&self, retries_taken: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base
            .checked_mul(1u32.checked_shl(retries_taken.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        if self.jitter_percent == 0 {
            return exp;
        }
        // Draw in whole per-mille steps so the jitter is exact integer arithmetic: the same seed
        // gives the same delay on every platform.
        let cut_permille =
            rng.random_range(0..1000u32) * u32::from(self.jitter_percent.min(100)) / 100;
        exp - exp * cut_permille / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn doubles_then_caps_within_jitter() {
        let b = Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(8),
            jitter_percent: 25,
        };
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(1);
        for (n, full) in [
            (0, 500),
            (1, 1000),
            (2, 2000),
            (4, 8000),
            (10, 8000),
            (40, 8000),
        ] {
            let d = b.delay(n, &mut rng).as_millis() as u64;
            assert!(
                d <= full && d * 4 >= full * 3,
                "retry {n}: {d} ms not in [{}, {full}]",
                full * 3 / 4
            );
        }
        let exact = Backoff {
            jitter_percent: 0,
            ..b
        };
        assert_eq!(exact.delay(3, &mut rng), Duration::from_secs(4));
    }
}
