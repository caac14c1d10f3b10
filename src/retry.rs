//! When to try a failed sync again: exponential backoff, capped, with a give-up point.
//!
//! Attempt `n` is the number of the relay's consecutive trailing `fail_relay_sync` activities,
//! so it survives restarts without any state of its own. Retry `n` waits
//! `min(base * 2^(n-1), cap)`: 30 s, 60 s, 120 s, 240 s, 480 s, 900 s with the defaults. Past
//! `max_attempts` there is no retry: the relay waits for its next change or a manual sync.

use std::time::Duration;

/// The backoff rule. Tests use milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first retry's delay (`SYNC_RETRY_BASE`); each next one doubles.
    pub base: Duration,
    /// The longest delay (`SYNC_RETRY_CAP`).
    pub cap: Duration,
    /// Retries before giving up (`SYNC_RETRY_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// Add up to +10 % random jitter to spread retries after an outage.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(30),
            cap: Duration::from_secs(15 * 60),
            max_attempts: 6,
            jitter: true,
        }
    }
}

/// What to do after failure number `attempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Nothing failed since the last success: no retry is needed.
    NotNeeded,
    /// Try again after this long.
    RetryAfter(Duration),
    /// Too many failures in a row; stop retrying.
    GiveUp,
}

impl RetryPolicy {
    /// The delay before retry `attempt` (1-based), before jitter; `None` past `max_attempts`.
    pub fn backoff(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt > self.max_attempts {
            return None;
        }
        let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
        Some(self.base.saturating_mul(factor).min(self.cap))
    }

    /// The decision after `attempt` consecutive failures. `unit` in `[0, 1)` picks the jitter
    /// (pass a random number; it is ignored when jitter is off).
    pub fn decide(&self, attempt: u32, unit: f64) -> RetryDecision {
        if attempt == 0 {
            return RetryDecision::NotNeeded;
        }
        match self.backoff(attempt) {
            None => RetryDecision::GiveUp,
            Some(delay) if self.jitter => {
                RetryDecision::RetryAfter(delay.mul_f64(1.0 + 0.1 * unit.clamp(0.0, 1.0)))
            }
            Some(delay) => RetryDecision::RetryAfter(delay),
        }
    }

    /// How much of `delay` is left when the failure it follows was recorded at `failed_at`
    /// and it is `now` (unix seconds, as the database records them). A restart computes the
    /// same schedule again instead of starting the delay over. Times are whole seconds, so one
    /// second is not counted as elapsed: a retry may come up to a second late, never early.
    /// A clock that moved back (`failed_at` in the future) counts nothing as elapsed.
    pub fn remaining(delay: Duration, failed_at: i64, now: i64) -> Duration {
        let elapsed = now.saturating_sub(failed_at).saturating_sub(1).max(0) as u64;
        delay.saturating_sub(Duration::from_secs(elapsed))
    }

    /// Whether a relay with `attempt` trailing failures has stopped being retried.
    pub fn gave_up(&self, attempt: u32) -> bool {
        attempt > self.max_attempts
    }
}

/// A random number in `[0, 1)` for jitter.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn what_is_left_of_a_delay_counts_from_the_recorded_failure() {
        let d = Duration::from_secs(120);
        assert_eq!(RetryPolicy::remaining(d, 1000, 1000), d, "just failed");
        assert_eq!(
            RetryPolicy::remaining(d, 1000, 1001),
            d,
            "a second is not counted"
        );
        assert_eq!(
            RetryPolicy::remaining(d, 1000, 1031),
            Duration::from_secs(90)
        );
        assert_eq!(RetryPolicy::remaining(d, 1000, 1121), Duration::ZERO, "due");
        assert_eq!(
            RetryPolicy::remaining(d, 1000, 9999),
            Duration::ZERO,
            "long due"
        );
        assert_eq!(
            RetryPolicy::remaining(d, 5000, 1000),
            d,
            "the clock moved back"
        );
        assert_eq!(
            RetryPolicy::remaining(d, i64::MIN, i64::MAX),
            Duration::ZERO
        );
    }

    use super::*;

    #[test]
    fn jitter_adds_up_to_a_tenth_and_only_when_asked() {
        let mut policy = RetryPolicy {
            base: Duration::from_secs(30),
            cap: Duration::from_secs(900),
            max_attempts: 6,
            jitter: true,
        };
        assert_eq!(
            policy.decide(1, 0.5),
            RetryDecision::RetryAfter(Duration::from_millis(31_500))
        );
        assert_eq!(
            policy.decide(2, 1.0),
            RetryDecision::RetryAfter(Duration::from_secs(66))
        );
        policy.jitter = false;
        assert_eq!(
            policy.decide(1, 0.5),
            RetryDecision::RetryAfter(Duration::from_secs(30))
        );
    }

    #[test]
    fn random_units_spread_over_zero_to_one() {
        let draws: Vec<f64> = (0..200).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(draws.iter().any(|u| *u > 0.5) && draws.iter().any(|u| *u < 0.5));
    }

    #[test]
    fn default_schedule_doubles_to_the_cap_then_gives_up() {
        let p = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        let secs: Vec<u64> = (1..=6).map(|n| p.backoff(n).unwrap().as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 900]);
        assert_eq!(p.decide(7, 0.5), RetryDecision::GiveUp);
        assert_eq!(p.decide(0, 0.5), RetryDecision::NotNeeded);
        assert!(p.gave_up(7) && !p.gave_up(6));
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = RetryPolicy {
            max_attempts: u32::MAX,
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(40), Some(p.cap));
        assert_eq!(p.backoff(u32::MAX), Some(p.cap));
    }

    #[test]
    fn jitter_adds_at_most_ten_percent() {
        let p = RetryPolicy::default();
        for unit in [0.0, 0.5, 0.999_999] {
            let RetryDecision::RetryAfter(d) = p.decide(1, unit) else {
                panic!()
            };
            assert!(
                d >= Duration::from_secs(30) && d <= Duration::from_secs(33),
                "{d:?}"
            );
        }
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
