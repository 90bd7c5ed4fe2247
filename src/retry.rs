//! Capped exponential backoff with jitter, shared by every stage that waits on the store.

use std::time::Duration;

/// Delays for successive attempts: `initial`, doubling up to `max`, each with up to 50%
/// random jitter taken off so that many writers retrying together spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempts: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempts: 0,
        }
    }

    /// Attempts that have failed so far.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// The un-jittered delay of the next attempt.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32
            .checked_shl(self.attempts.min(30) as u32)
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay to wait before the next attempt; counts one failed attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempts += 1;
        let jitter = rand::random::<f64>() * 0.5;
        ceiling.mul_f64(1.0 - jitter)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let ceilings: Vec<u128> = (0..6)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d <= c && d >= c / 2, "{d:?} vs {c:?}");
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
