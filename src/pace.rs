//! Pacing catch-ups by what zooid's writes cost it, so that zooid's own users come first.
//!
//! zooid serves its relays' users from the same process, often on one core, and each write
//! costs it tens of milliseconds that grow with its fleet (`docs/zooid-api.md`). A catch-up
//! (after an outage, a `sync --all`, a host importing relays, a start with a backlog) sent
//! as fast as the workers go makes every user of every relay wait. So writes from a backlog
//! are paced to use at most a **share** of zooid's time (`SYNC_ZOOID_SHARE`, 25 % by default).
//!
//! zooid's cost is learned, not configured, because it depends on zooid's fleet, version and
//! machine. Every request's latency is observed. The cheapest requests (the probe, reads) give
//! the **floor**: the network and the fixed cost of any request. A write's latency above the
//! floor is zooid's **work** for it (an average over recent writes). Then, like TCP Vegas and
//! LEDBAT, which read queueing from latency above a base:
//!
//! - writes start at most one per `work / share` (60 ms of work at 25 %: one every 240 ms, 4 a
//!   second, so zooid spends 75 % of its time on its users);
//! - writes in flight are limited to what that rate needs, by Little's law:
//!   `ceil(share × latency / work)`, between 1 (zooid slow: latency is its work) and the pool's
//!   size (zooid fast, or far away: latency is network, and more in flight cost it nothing).
//!
//! A fresh write (a host's change, a manual sync of a few relays, the follow-up of either; see
//! the pool's lanes, `infra::lanes`) is **urgent**: it is admitted at once whatever the budget, and its cost
//! is charged to the backlog that follows, up to [`DEBT_SPACINGS`] budgets: so the share
//! holds while fresh work and a backlog mix, and a backlog resumes soon after a busy spell.
//! After a quiet time the budget is full, so the first write of a backlog goes at once too.
//! Pacing never adds delay to the first request after a quiet time. `SYNC_MAX_RATE` stays the
//! hard ceiling on top of all of this.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How many recent write latencies are kept, for their 90th percentile.
const RECENT: usize = 32;

/// How much of a new write latency moves the average of zooid's work (an exponential moving
/// average: recent writes count most, one outlier does not swing the pace).
const SMOOTHING: f64 = 0.3;

/// How many write budgets fresh work may push a backlog's next write back by. Fresh writes are
/// admitted whatever the budget and charged to it, so that zooid's share holds while a host's
/// changes and a backlog mix; the charge is bounded, so a backlog waits at most this many
/// spacings once fresh work stops.
pub const DEBT_SPACINGS: u32 = 2;

/// How long a measured floor is trusted before a backlog asks for a new one.
pub const FLOOR_AGE: Duration = Duration::from_secs(30);

/// The pacing state, without threads or clocks of its own.
#[derive(Debug, Clone)]
pub struct Pace {
    /// The most of zooid's time writes may take, in (0, 1]; 0 turns pacing off.
    share: f64,
    /// The pool's size: the most writes ever in flight.
    max_in_flight: usize,
    in_flight: usize,
    /// When the next backlog write may start.
    next_start: Option<Instant>,
    /// The cheapest latency seen, and when it was last measured.
    floor: Option<(Duration, Instant)>,
    /// zooid's work for one write (latency above the floor), smoothed, in seconds.
    work: Option<f64>,
    /// A write's latency, smoothed, in seconds.
    latency: Option<f64>,
    recent: VecDeque<Duration>,
    /// When a backlog last asked for the floor to be measured.
    floor_asked: Option<Instant>,
}

impl Pace {
    /// Pacing writes to `share` of zooid's time (0: no pacing), with at most `max_in_flight`
    /// at once.
    pub fn new(share: f64, max_in_flight: usize) -> Pace {
        Pace {
            share: share.clamp(0.0, 1.0),
            max_in_flight: max_in_flight.max(1),
            in_flight: 0,
            next_start: None,
            floor: None,
            work: None,
            latency: None,
            recent: VecDeque::with_capacity(RECENT),
            floor_asked: None,
        }
    }

    fn paced(&self) -> bool {
        self.share > 0.0
    }

    /// The time one write's budget spans: its work divided by the share.
    pub fn spacing(&self) -> Duration {
        match (self.paced(), self.work) {
            (true, Some(work)) => {
                Duration::try_from_secs_f64(work / self.share).unwrap_or(Duration::from_secs(3600))
            }
            _ => Duration::ZERO,
        }
    }

    /// The most writes in flight now: what the paced rate needs (Little's law), between 1 and
    /// the pool's size.
    pub fn limit(&self) -> usize {
        match (self.paced(), self.work, self.latency) {
            (true, Some(work), Some(latency)) if work > 0.0 => {
                let needed = (self.share * latency / work).ceil();
                (needed as usize).clamp(1, self.max_in_flight)
            }
            (true, _, _) if self.work.is_none() => 1,
            _ => self.max_in_flight,
        }
    }

    /// Admits a write at `now`, counting it in flight, or answers how to wait: until a write
    /// in flight ends (`None`) or until an instant. An urgent write is always admitted; its
    /// budget pushes back the writes that follow.
    pub fn try_start(&mut self, now: Instant, urgent: bool) -> Result<(), Option<Instant>> {
        // Fresh writes beyond the share push the backlog back, but never by more than
        // DEBT_SPACINGS budgets at today's spacing: a backlog that waited that long resumes,
        // however much fresh work went before and however much faster zooid got since (a
        // debt without a bound stops the backlog for minutes after a busy spell).
        let spacing = self.spacing();
        let most = now + spacing.saturating_mul(DEBT_SPACINGS);
        self.next_start = self.next_start.map(|next| next.min(most));
        if !urgent {
            if self.in_flight >= self.limit() {
                return Err(None);
            }
            if let Some(next) = self.next_start.filter(|next| *next > now) {
                return Err(Some(next));
            }
        }
        self.in_flight += 1;
        let from = self.next_start.map_or(now, |next| next.max(now));
        self.next_start = Some((from + spacing).min(most));
        Ok(())
    }

    /// A write admitted by [`try_start`](Self::try_start) is over.
    pub fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// A write took `latency` (its timeout, when it timed out).
    pub fn write_took(&mut self, latency: Duration) {
        let floor = self.floor.map_or(0.0, |(f, _)| f.as_secs_f64());
        let secs = latency.as_secs_f64();
        let work = (secs - floor).max(0.0);
        let smooth = |old: Option<f64>, new: f64| match old {
            Some(old) => old + SMOOTHING * (new - old),
            None => new,
        };
        self.work = Some(smooth(self.work, work));
        self.latency = Some(smooth(self.latency, secs));
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(latency);
    }

    /// A cheap request (a read, the probe) took `latency` at `now`: the floor.
    pub fn read_took(&mut self, latency: Duration, now: Instant) {
        let fresh = self
            .floor
            .is_some_and(|(_, at)| now.saturating_duration_since(at) < FLOOR_AGE);
        self.floor = Some(match self.floor {
            Some((floor, at)) if fresh && floor <= latency => (floor, at),
            _ => (latency, now),
        });
    }

    /// Whether a backlog should measure the floor first: none yet, or an old one. Answers
    /// true at most once per [`FLOOR_AGE`], whether the measure then succeeds or not, so a
    /// zooid that does not answer is not asked again and again.
    pub fn wants_floor(&mut self, now: Instant) -> bool {
        let old = |at: Option<Instant>| {
            at.is_none_or(|at| now.saturating_duration_since(at) >= FLOOR_AGE)
        };
        let wanted = self.paced() && old(self.floor.map(|(_, at)| at)) && old(self.floor_asked);
        if wanted {
            self.floor_asked = Some(now);
        }
        wanted
    }

    /// The 90th percentile of recent write latencies.
    pub fn p90(&self) -> Option<Duration> {
        let mut sorted: Vec<Duration> = self.recent.iter().copied().collect();
        sorted.sort();
        let i = (sorted.len() * 9).div_ceil(10).checked_sub(1)?;
        sorted.get(i).copied()
    }

    /// A write's latency, smoothed.
    pub fn write_latency(&self) -> Option<Duration> {
        self.latency
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
    }
}

/// The [`Pace`] shared by the client (which observes every request) and the pool (which
/// admits writes through it, `infra::lanes::Lanes::next`).
#[derive(Debug)]
pub struct Pacer {
    pace: Mutex<Pace>,
    timeout: Duration,
    /// Whether the WARN about writes nearing the timeout was given (it is given again once
    /// they are fast again).
    warned: Mutex<bool>,
}

impl Pacer {
    /// A pacer for writes to `share` of zooid's time, at most `max_in_flight` at once, whose
    /// requests time out after `timeout`.
    pub fn new(share: f64, max_in_flight: usize, timeout: Duration) -> Pacer {
        Pacer {
            pace: Mutex::new(Pace::new(share, max_in_flight)),
            timeout,
            warned: Mutex::new(false),
        }
    }

    /// The pace itself, for the pool to admit writes by. Held briefly: every answer from
    /// zooid takes it too.
    pub(crate) fn pace(&self) -> MutexGuard<'_, Pace> {
        self.pace.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A write admitted by the pace is over.
    pub(crate) fn end_write(&self) {
        self.pace().finished();
    }

    /// Whether a backlog should measure the floor before its next write.
    pub fn wants_floor(&self) -> bool {
        self.pace().wants_floor(Instant::now())
    }

    /// A request answered (or failed) after `latency`; `write` says whether it was a write,
    /// `timed_out` whether it ran into the timeout.
    pub fn observe(&self, write: bool, latency: Duration, timed_out: bool) {
        let latency = if timed_out {
            latency.max(self.timeout)
        } else {
            latency
        };
        let p90 = {
            let mut pace = self.pace();
            match write {
                true => pace.write_took(latency),
                false if !timed_out => pace.read_took(latency, Instant::now()),
                false => {}
            }
            pace.p90()
        };
        if write {
            let _ = self.warn_when_slow(p90);
        }
    }

    /// One WARN when zooid's writes near the timeout (their 90th percentile above half of it),
    /// and one INFO once they are well below again (a third). Answers which it said, if any.
    fn warn_when_slow(&self, p90: Option<Duration>) -> Option<bool> {
        let p90 = p90?;
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if !*warned && p90 > self.timeout / 2 {
            *warned = true;
            log::warn!(
                "zooid's writes take {} (90th percentile), more than half of ZOOID_TIMEOUT \
                 ({}): raise ZOOID_TIMEOUT before writes time out; zooid's writes grow with \
                 its fleet",
                crate::words::show_duration(round_ms(p90)),
                crate::words::show_duration(self.timeout)
            );
            Some(true)
        } else if *warned && p90 < self.timeout / 3 {
            *warned = false;
            log::info!(
                "zooid's writes take {} again (90th percentile)",
                crate::words::show_duration(round_ms(p90))
            );
            Some(false)
        } else {
            None
        }
    }

    /// The current limit of writes in flight, the spacing of backlog writes, and a write's
    /// smoothed latency: what `/metrics` shows.
    pub fn state(&self) -> (usize, Duration, Option<Duration>) {
        let pace = self.pace();
        (pace.limit(), pace.spacing(), pace.write_latency())
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_lone_write_goes_at_once_and_a_backlog_is_spaced_by_work_over_share() {
        let t0 = Instant::now();
        let mut p = Pace::new(0.25, 4);
        assert_eq!(
            p.try_start(t0, false),
            Ok(()),
            "nothing known: the first goes"
        );
        p.read_took(MS, t0);
        p.write_took(61 * MS);
        p.finished();
        assert_eq!(p.spacing(), 240 * MS, "60 ms of work at 25 %");
        assert_eq!(p.limit(), 1, "zooid slow: one at a time");
        // The first write's budget was nothing (no measure yet); the next one goes at once.
        assert_eq!(p.try_start(t0, false), Ok(()));
        assert_eq!(p.try_start(t0, false), Err(None), "one in flight");
        p.finished();
        assert_eq!(p.try_start(t0, false), Err(Some(t0 + 240 * MS)), "spaced");
        assert_eq!(p.try_start(t0 + 240 * MS, false), Ok(()));
        p.finished();
        // After a quiet time the budget is full again: no delay.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(p.try_start(later, false), Ok(()));
    }

    #[test]
    fn an_urgent_write_never_waits_and_the_backlog_pays_for_it() {
        let t0 = Instant::now();
        let mut p = Pace::new(0.25, 4);
        p.read_took(MS, t0);
        p.write_took(101 * MS);
        assert_eq!(p.try_start(t0, false), Ok(()));
        assert_eq!(
            p.try_start(t0, true),
            Ok(()),
            "beyond the limit and the budget"
        );
        p.finished();
        p.finished();
        assert_eq!(
            p.try_start(t0, false),
            Err(Some(t0 + 800 * MS)),
            "two budgets"
        );
    }

    #[test]
    fn fresh_work_pushes_the_backlog_back_by_a_bounded_debt() {
        let t0 = Instant::now();
        let mut p = Pace::new(0.25, 4);
        p.read_took(MS, t0);
        p.write_took(101 * MS); // 400 ms a write
        for _ in 0..50 {
            assert_eq!(p.try_start(t0, true), Ok(()), "fresh goes at once");
            p.finished();
        }
        let most = t0 + 400 * MS * DEBT_SPACINGS;
        assert_eq!(
            p.try_start(t0, false),
            Err(Some(most)),
            "fifty fresh writes cost the backlog {DEBT_SPACINGS} budgets, not fifty"
        );
        assert_eq!(p.try_start(most, false), Ok(()));
        p.finished();
        assert_eq!(
            p.try_start(most + 399 * MS, false),
            Err(Some(most + 400 * MS)),
            "then one budget a write"
        );
        // A fresh write below the debt's bound is charged in full.
        let later = most + Duration::from_secs(10);
        assert_eq!(p.try_start(later, true), Ok(()));
        p.finished();
        assert_eq!(p.try_start(later, false), Err(Some(later + 400 * MS)));
    }

    #[test]
    fn latency_that_is_network_lets_more_writes_fly() {
        let t0 = Instant::now();
        let mut p = Pace::new(0.25, 4);
        p.read_took(50 * MS, t0);
        p.write_took(52 * MS);
        assert_eq!(p.spacing(), 8 * MS);
        assert_eq!(p.limit(), 4, "ceil(0.25 x 52 / 2) = 7, the pool's 4");
        let mut q = Pace::new(0.25, 8);
        q.read_took(50 * MS, t0);
        q.write_took(60 * MS);
        assert_eq!(q.limit(), 2, "ceil(0.25 x 60 / 10)");
    }

    #[test]
    fn no_share_means_no_pacing() {
        let t0 = Instant::now();
        let mut p = Pace::new(0.0, 3);
        p.write_took(500 * MS);
        assert_eq!(p.spacing(), Duration::ZERO);
        assert_eq!(p.limit(), 3);
        assert!(!p.wants_floor(t0));
        for _ in 0..3 {
            assert_eq!(p.try_start(t0, false), Ok(()));
        }
        assert_eq!(
            p.try_start(t0, false),
            Err(None),
            "the pool's size still holds"
        );
    }

    #[test]
    fn the_floor_is_the_cheapest_recent_read_and_ages() {
        let t0 = Instant::now();
        let mut p = Pace::new(0.25, 4);
        assert!(p.wants_floor(t0));
        assert!(!p.wants_floor(t0), "asked already");
        p.read_took(3 * MS, t0);
        p.read_took(5 * MS, t0 + MS);
        assert!(!p.wants_floor(t0 + MS));
        p.write_took(43 * MS);
        assert_eq!(p.spacing(), 160 * MS, "(43 - 3) / 0.25");
        let old = t0 + FLOOR_AGE;
        assert!(p.wants_floor(old));
        p.read_took(7 * MS, old);
        p.write_took(47 * MS);
        // work: 40 + 0.3 x (40 - 40) = 40 ms, the floor being 7 now.
        assert_eq!(p.spacing(), 160 * MS);
    }

    #[test]
    fn writes_are_smoothed_and_the_90th_percentile_is_of_recent_ones() {
        let mut p = Pace::new(0.5, 4);
        assert_eq!(p.p90(), None);
        p.write_took(100 * MS);
        p.write_took(200 * MS);
        // 100 + 0.3 x (200 - 100) = 130 ms of work, no floor.
        assert_eq!(p.spacing(), 260 * MS);
        assert_eq!(p.write_latency(), Some(130 * MS));
        for n in 1..=40u32 {
            p.write_took(n * MS);
        }
        assert_eq!(p.p90(), Some(37 * MS), "the last 32: 9..=40 ms");
    }

    #[test]
    fn nothing_known_means_one_in_flight_and_free_work_means_the_pool() {
        assert_eq!(
            Pace::new(0.25, 4).limit(),
            1,
            "the first answer sets the pace"
        );
        let mut p = Pace::new(0.25, 4);
        p.read_took(5 * MS, Instant::now());
        p.write_took(5 * MS);
        assert_eq!(p.spacing(), Duration::ZERO, "no work measurable");
        assert_eq!(p.limit(), 4);
    }

    #[test]
    fn a_timed_out_write_costs_the_timeout_and_a_timed_out_read_says_nothing() {
        let pacer = Pacer::new(0.5, 4, 400 * MS);
        assert!(pacer.wants_floor());
        pacer.observe(false, 300 * MS, true);
        assert!(!pacer.wants_floor(), "asked once");
        pacer.observe(true, 100 * MS, true);
        let (_, spacing, latency) = pacer.state();
        assert_eq!(latency, Some(400 * MS), "at least the timeout");
        assert_eq!(
            spacing,
            800 * MS,
            "no floor was measured by the failed read"
        );
    }

    #[test]
    fn writes_near_the_timeout_are_warned_about_once() {
        let pacer = Pacer::new(0.25, 4, 1000 * MS);
        assert_eq!(pacer.warn_when_slow(None), None);
        assert_eq!(
            pacer.warn_when_slow(Some(500 * MS)),
            None,
            "half is not above half"
        );
        assert_eq!(pacer.warn_when_slow(Some(501 * MS)), Some(true));
        assert_eq!(pacer.warn_when_slow(Some(900 * MS)), None, "once");
        assert_eq!(
            pacer.warn_when_slow(Some(334 * MS)),
            None,
            "not yet well below"
        );
        assert_eq!(pacer.warn_when_slow(Some(333 * MS)), Some(false));
        assert_eq!(pacer.warn_when_slow(Some(100 * MS)), None);
    }
}
