//! [`Pause`]: a sleep that a stop ends at once, for the background threads that wake on a
//! schedule (the existence audit).
//!
//! It parks on a condition variable: the thread sleeps straight away, where a channel's timed
//! receive spins and yields a little first, which, repeated every interval of an idle loop,
//! was most of an idle daemon's CPU.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

/// A stop flag and the condition variable its thread sleeps on.
#[derive(Debug, Default)]
pub(crate) struct Pause {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Pause {
    /// Sleeps until `deadline` or a stop; answers whether stopped.
    pub(crate) fn until(&self, deadline: Instant) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if *stopped || left.is_zero() {
                return *stopped;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Ends the current and every later sleep at once.
    pub(crate) fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_stop_ends_a_long_sleep_at_once_and_every_later_one() {
        let pause = Arc::new(Pause::default());
        let sleeper = pause.clone();
        let started = Instant::now();
        let thread =
            std::thread::spawn(move || sleeper.until(Instant::now() + Duration::from_secs(60)));
        pause.stop();
        assert!(thread.join().unwrap(), "stopped");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(pause.until(Instant::now() + Duration::from_secs(60)));
    }

    #[test]
    fn without_a_stop_it_sleeps_to_the_deadline() {
        let pause = Pause::default();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(!pause.until(deadline), "not stopped");
        assert!(Instant::now() >= deadline, "never early");
        assert!(
            !pause.until(Instant::now() - Duration::from_millis(1)),
            "past: at once"
        );
    }
}
