//! The relay users' sampler (`zooid-sync-sampler`): while a backlog is paced, asks zooid for
//! a relay's NIP-11 document as one of its users would, at random moments, and feeds the
//! pacer what the answers took (see [`crate::pace::users`] for what it learns from them).
//!
//! It sleeps while no backlog is paced (the pool wakes it through the pacer), while zooid is
//! unavailable, and for good once zooid turned out not to answer relay users at its API's
//! address (then the pace goes by zooid's answers alone). At its start it asks as a user of a
//! few relays zooid serves, so that the log says at once which way catch-ups are paced; later
//! hosts come from the relays the worker syncs.
//!
//! Each sample is two questions in a row: the first says what a user waits, the second whether
//! zooid's core was busy ([`crate::pace::users`]). The moments are a Poisson process (random
//! gaps, [`SAMPLES_PER_SECOND`] on average), so that they see zooid's core as it is on average,
//! not in step with the writes.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::breaker::Breaker;
use crate::metrics::{Metrics, ZooidMetrics};
use crate::pace::users::SAMPLES_PER_SECOND;
use crate::pace::Pacer;
use crate::retry::random_unit;
use crate::zooid::ZooidClient;

/// How many samples measure what users wait while zooid-sync is quiet, before a backlog's
/// first write.
pub(crate) const IDLE_SAMPLES: usize = 8;

/// How many relays zooid serves are asked about at start.
const FIRST_HOSTS: usize = 3;

/// The running sampler.
pub(crate) struct Sampler {
    pacer: Arc<Pacer>,
    thread: JoinHandle<()>,
}

impl Sampler {
    /// Starts the sampler for `client`'s pacer; `hosts` are relays zooid serves now (their
    /// hosts), asked about first.
    pub(crate) fn start(
        client: ZooidClient,
        breaker: Arc<Breaker>,
        metrics: Arc<Metrics>,
        zooid_metrics: Arc<ZooidMetrics>,
        hosts: Vec<String>,
    ) -> std::io::Result<Sampler> {
        let pacer = client.pacer().clone();
        let watch = metrics.watch_thread("zooid-sync-sampler");
        let thread = std::thread::Builder::new()
            .name("zooid-sync-sampler".into())
            .spawn(move || {
                let _watch = watch;
                run(&client, &breaker, &zooid_metrics, &hosts)
            })?;
        Ok(Sampler { pacer, thread })
    }

    /// Stops the sampler, and waits for the question it is asking, if any.
    pub(crate) fn stop(self) {
        self.pacer.stop_sampler();
        let _ = self.thread.join();
    }
}

fn run(client: &ZooidClient, breaker: &Breaker, metrics: &ZooidMetrics, hosts: &[String]) {
    let pacer = client.pacer();
    if first_check(client, hosts) {
        return; // relay users cannot be asked
    }
    let mut due = Instant::now();
    while pacer.sampler_wait(due) {
        due = Instant::now() + gap();
        if breaker.outage().is_some() {
            continue;
        }
        let Some(host) = pacer.served_host() else {
            continue;
        };
        match sample(client, &host) {
            Sampled::Waits(at, first, second) => {
                pacer.user_sample(at, first, second, &host);
                if let Some(users) = pacer.users_state() {
                    metrics.set_users(&users);
                }
            }
            Sampled::Refused(why) if pacer.user_refused(&host, &why) => {
                metrics.set_pace(&pacer.state());
                return;
            }
            Sampled::Refused(_) | Sampled::NoAnswer => {}
        }
    }
}

/// Asks as a user of each of `hosts` until one answers: says in the log which way catch-ups
/// are paced. Answers true when relay users turned out not to be askable.
fn first_check(client: &ZooidClient, hosts: &[String]) -> bool {
    let pacer = client.pacer();
    for host in hosts.iter().take(FIRST_HOSTS) {
        match client.ask_as_user(host) {
            Ok(wait) => {
                pacer.served(host);
                pacer.user_answered(host, wait);
                return false;
            }
            Err(Some(why)) => {
                if pacer.user_refused(host, &why) {
                    return true;
                }
            }
            // zooid does not answer now: the first catch-up tells.
            Err(None) => return false,
        }
    }
    false
}

/// What one sample got.
enum Sampled {
    /// When it started, and the two waits.
    Waits(Instant, Duration, Duration),
    /// An answer that is not the relay's NIP-11 document.
    Refused(String),
    /// No answer.
    NoAnswer,
}

/// Two questions in a row as a user of `host`.
fn sample(client: &ZooidClient, host: &str) -> Sampled {
    let at = Instant::now();
    let ask = || match client.ask_as_user(host) {
        Ok(wait) => Ok(wait),
        Err(Some(why)) => Err(Sampled::Refused(why)),
        Err(None) => Err(Sampled::NoAnswer),
    };
    match ask().and_then(|first| Ok((first, ask()?))) {
        Ok((first, second)) => Sampled::Waits(at, first, second),
        Err(e) => e,
    }
}

/// Measures what users wait while zooid-sync is quiet: [`IDLE_SAMPLES`] samples in a row,
/// before a backlog's first write. Quietly does nothing when no host is known or zooid does
/// not answer.
pub(crate) fn measure_idle(client: &ZooidClient) {
    let pacer = client.pacer();
    let Some(host) = pacer.served_host() else {
        return;
    };
    for _ in 0..IDLE_SAMPLES {
        match sample(client, &host) {
            Sampled::Waits(at, first, second) => pacer.user_sample(at, first, second, &host),
            Sampled::Refused(why) => {
                pacer.user_refused(&host, &why);
                return;
            }
            Sampled::NoAnswer => return,
        }
    }
}

/// A random gap between samples: exponential, [`SAMPLES_PER_SECOND`] on average, at most
/// ten times the mean.
fn gap() -> Duration {
    gap_at(random_unit())
}

/// The gap for a uniform draw `u` in [0, 1): the exponential distribution's quantile.
fn gap_at(u: f64) -> Duration {
    let mean = 1.0 / SAMPLES_PER_SECOND;
    let gap = -(1.0 - u).ln() * mean;
    Duration::from_secs_f64(gap.min(10.0 * mean))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_random_around_the_mean_and_bounded() {
        let gaps: Vec<Duration> = (0..4000).map(|_| gap()).collect();
        let mean = gaps.iter().sum::<Duration>() / gaps.len() as u32;
        let expected = Duration::from_secs_f64(1.0 / SAMPLES_PER_SECOND);
        assert!(
            mean > expected.mul_f64(0.9) && mean < expected.mul_f64(1.1),
            "{mean:?} for {expected:?}"
        );
        assert!(gaps.iter().all(|g| *g <= expected * 10));
        let short = gaps.iter().filter(|g| **g < expected).count();
        // An exponential gap is shorter than its mean 63 % of the time.
        assert!((2300..2750).contains(&short), "{short} of 4000");
        assert_eq!(gap_at(0.0), Duration::ZERO);
        assert_eq!(gap_at(1.0 - 1e-9), expected * 10, "the longest");
        let median = gap_at(0.5).as_secs_f64();
        assert!((median - 2f64.ln() * expected.as_secs_f64()).abs() < 1e-9);
    }
}
