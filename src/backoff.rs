//! Exponential backoff with jitter, the one retry policy of the engine.
//!
//! Jitter spreads the retries of many shards and many workers so that a
//! throttled fleet does not come back in lock-step and get throttled again.

use std::time::Duration;

use rand::Rng;

/// Delays that double from `base` up to `max`, each drawn uniformly from the
/// upper half of the current step ("equal jitter"): never shorter than half
/// the step, so a retry storm still slows down.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff whose first delay is about `base` and whose delays never exceed `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The policy for AWS calls: 100 ms doubling to 10 s.
    pub fn for_aws_calls() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// The next delay to wait before retrying.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let step = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let jitter_ms = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }

    /// How many delays have been handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts again from `base`, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_within_bounds() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut previous_step = Duration::ZERO;
        for attempt in 0..10u32 {
            let step = (Duration::from_millis(100) * 2u32.pow(attempt)).min(Duration::from_secs(2));
            let delay = backoff.next_delay();
            assert!(delay >= step / 2 && delay <= step, "{attempt}: {delay:?}");
            assert!(step >= previous_step);
            previous_step = step;
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
