//! The ceiling on the rate of requests to zooid: one token bucket for the whole client.
//!
//! Per-relay backoff says when one relay may be tried again; it says nothing about how hard
//! the worker as a whole may press on zooid. After an outage every pending relay is due at
//! once, and a full re-push touches every relay; a zooid on a small VM must survive both. So
//! every request [`crate::ZooidClient`] sends, whatever asked for it (a sync, a probe, a heal, a
//! listing), first takes a token from one [`TokenBucket`]: `rate` tokens a second, up to
//! `burst` saved up. A caller that finds the bucket empty sleeps until its token is due; the
//! reservation is made under the lock, so waiting callers are served in order and the rate
//! holds however many threads ask.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `burst` in hand.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Tokens in hand; below zero when callers have reserved tokens not yet earned.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate` must be above zero.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let burst = burst.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token at `now`; answers how long the caller must wait before using it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = self.last.max(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // A rate too small to express (never from a checked Env) waits an hour, not a
            // panic.
            Duration::try_from_secs_f64(-self.tokens / self.rate)
                .unwrap_or(Duration::from_secs(3600))
        }
    }
}

/// A [`TokenBucket`] shared by threads, or no ceiling at all.
#[derive(Debug)]
pub struct RateLimit(Option<Mutex<TokenBucket>>);

impl RateLimit {
    /// `rate` requests per second with a burst of one second's worth; `0`: no ceiling.
    pub fn per_second(rate: f64) -> RateLimit {
        if rate <= 0.0 {
            return RateLimit(None);
        }
        RateLimit(Some(Mutex::new(TokenBucket::new(
            rate,
            rate,
            Instant::now(),
        ))))
    }

    /// Blocks until the caller may send one request.
    pub fn acquire(&self) {
        let Some(bucket) = &self.0 else { return };
        let wait = bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        for _ in 0..3 {
            assert_eq!(b.reserve(t0), Duration::ZERO, "the burst is free");
        }
        // The fourth waits one token's time; the fifth two.
        assert_eq!(b.reserve(t0), Duration::from_millis(100));
        assert_eq!(b.reserve(t0), Duration::from_millis(200));
    }

    #[test]
    fn tokens_come_back_with_time_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 2.0, t0);
        b.reserve(t0);
        b.reserve(t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert!(
            b.reserve(later) > Duration::ZERO,
            "no more than the burst saved"
        );
    }

    #[test]
    fn over_any_second_no_more_than_rate_plus_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50.0, 50.0, t0);
        let sends: Vec<Duration> = (0..500).map(|_| b.reserve(t0)).collect();
        let in_first_second = sends
            .iter()
            .filter(|d| **d < Duration::from_secs(1))
            .count();
        assert!(in_first_second <= 100, "{in_first_second}");
        assert!(in_first_second >= 99, "{in_first_second}");
    }
}
