//! Pacing catch-ups by what zooid's writes cost it, so that zooid's own users come first.
//!
//! zooid serves its relays' users from the same process, often on one core, and each write
//! costs it tens of milliseconds that grow with its fleet (`docs/zooid-api.md`). A catch-up
//! (after an outage, a `sync --all`, a host importing relays, a start with a backlog) sent
//! as fast as the workers go makes every user of every relay wait. So writes from a backlog
//! are paced to use at most a **share** of zooid's time (`SYNC_ZOOID_SHARE`, 25 % by default).
//!
//! zooid's cost is learned, not configured, because it depends on zooid's fleet, version and
//! machine. Two signals teach it:
//!
//! - **zooid's answers.** The cheapest requests (the probe, reads) give the **floor**: the
//!   network and the fixed cost of any request. A write's latency above the floor is the work
//!   zooid does for it *before it answers* (an average over recent writes), as TCP Vegas reads
//!   queueing from latency above a base. zooid goes on working after it answered (it reloads
//!   the relay it wrote), and no answer shows that.
//! - **Its users** ([`users`]). While a backlog is paced, zooid-sync asks zooid for a relay's
//!   NIP-11 document as a relay user would, and learns what a write costs zooid's core *in
//!   all*, and how much longer users wait than when zooid-sync is quiet, as LEDBAT keeps the
//!   delay others feel under a target instead of guessing the bottleneck's cost. Until enough
//!   users' answers are in, a write costs its work before the answer and half of that again
//!   ([`AFTER_ANSWER`], what the real zooid's reload adds); where no user can be asked (a proxy
//!   that routes relay hosts elsewhere, or `SYNC_PACING=answers`), the answers alone pace.
//!
//! Then:
//!
//! - writes start at most one per `cost / share` (90 ms a write in all at 25 %: one every
//!   360 ms, so zooid spends 75 % of its time on its users), slower by the users' penalty while
//!   they wait more than `SYNC_USER_DELAY` above idle;
//! - writes in flight are limited to what that rate needs, by Little's law:
//!   `ceil(share × latency / cost)`, between 1 (zooid slow: latency is its work) and the pool's
//!   size (zooid fast, or far away: latency is network, and more in flight cost it nothing).
//!
//! A fresh write (a host's change, a manual sync of a few relays, the follow-up of either; see
//! the pool's lanes, `infra::lanes`) is **urgent**: it is admitted at once whatever the budget, and its cost
//! is charged to the backlog that follows, up to [`DEBT_SPACINGS`] budgets: so the share
//! holds while fresh work and a backlog mix, and a backlog resumes soon after a busy spell.
//! After a quiet time the budget is full, so the first write of a backlog goes at once too.
//! Pacing never adds delay to the first request after a quiet time. `SYNC_MAX_RATE` stays the
//! hard ceiling on top of all of this.

pub mod users;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
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

/// How long a measured floor is trusted before a backlog asks for a new one; the same for
/// what a user waits while zooid-sync is quiet.
pub const FLOOR_AGE: Duration = Duration::from_secs(30);

/// What zooid does for a write after it has answered, as a part of what it did before: until
/// its users say otherwise, a write costs `work × (1 + AFTER_ANSWER)`. The real zooid reloads
/// the relay once it has answered: about a third of a write's cost in all
/// (`docs/zooid-api.md`), half of what the answer shows.
pub const AFTER_ANSWER: f64 = 0.5;

/// How many users' samples the cost before any of them (`work × (1 + AFTER_ANSWER)`) weighs
/// as, while users' answers come in: the first samples move the cost, they do not set it.
const PRIOR_SAMPLES: f64 = 20.0;

/// How long after a write's answer zooid may still be busy with it, at least: a moment is
/// quiet (what users wait then is idle) when no write is out and none was answered for this
/// long, or twice a write's latency if that is longer.
pub const QUIET_AFTER: Duration = Duration::from_millis(200);

/// How long after a backlog last asked for a write its users are still asked.
pub const SAMPLING_LINGER: Duration = Duration::from_secs(2);

/// How the pace learns what a write costs zooid (`SYNC_PACING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// From zooid's answers and its relay users' (the default).
    Users,
    /// From zooid's answers alone: no relay user can be asked, or the operator said so.
    Answers,
}

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
    /// What relay users feel, when they are asked ([`Signal::Users`]).
    users: Option<users::UserSignal>,
    /// What one write costs zooid in all by its users' answers, and how many samples say so;
    /// updated with every sample and answer.
    users_cost: Option<(f64, u32)>,
    /// Writes sent and not answered yet (any request path, the pool's or not).
    writes_out: usize,
    /// When a write was last answered.
    last_answer: Option<Instant>,
    /// When a backlog last asked to start a write.
    backlog_asked: Option<Instant>,
    /// When the idle wait was last measured before a backlog, or asked for.
    idle_asked: Option<Instant>,
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
            users: None,
            users_cost: None,
            writes_out: 0,
            last_answer: None,
            backlog_asked: None,
            idle_asked: None,
        }
    }

    /// The same pace, learning also from zooid's relay users ([`Signal::Users`]), and keeping
    /// what they wait above idle under `target` (`SYNC_USER_DELAY`).
    pub fn with_users(mut self, target: Duration) -> Pace {
        self.users = Some(users::UserSignal::new(target));
        self
    }

    /// From now on, zooid's answers alone: no relay user can be asked.
    pub fn answers_only(&mut self) {
        self.users = None;
        self.users_cost = None;
    }

    /// Where the pace learns a write's cost from.
    pub fn signal(&self) -> Signal {
        match self.users {
            Some(_) => Signal::Users,
            None => Signal::Answers,
        }
    }

    fn paced(&self) -> bool {
        self.share > 0.0
    }

    /// What one write costs zooid's core in all, in seconds, with nothing of the users'
    /// penalty: by zooid's answers alone, or (when users are asked) by what their answers say,
    /// weighed against the answers' work and [`AFTER_ANSWER`] while there are few of them.
    pub fn write_cost(&self) -> Option<f64> {
        let work = self.work?;
        if self.users.is_none() {
            return Some(work);
        }
        let before_users = work * (1.0 + AFTER_ANSWER);
        Some(match self.users_cost {
            Some((cost, samples)) => {
                let samples = f64::from(samples);
                (cost * samples + before_users * PRIOR_SAMPLES) / (samples + PRIOR_SAMPLES)
            }
            None => before_users,
        })
    }

    /// What a write is paced by: its cost, times the users' penalty.
    fn paced_cost(&self) -> Option<f64> {
        let penalty = self.users.as_ref().map_or(1.0, |u| u.penalty());
        Some(self.write_cost()? * penalty)
    }

    /// The time one write's budget spans: its cost divided by the share.
    pub fn spacing(&self) -> Duration {
        match (self.paced(), self.paced_cost()) {
            (true, Some(cost)) => {
                Duration::try_from_secs_f64(cost / self.share).unwrap_or(Duration::from_secs(3600))
            }
            _ => Duration::ZERO,
        }
    }

    /// The most writes in flight now: what the paced rate needs (Little's law), between 1 and
    /// the pool's size.
    pub fn limit(&self) -> usize {
        match (self.paced(), self.paced_cost(), self.latency) {
            (true, Some(cost), Some(latency)) if cost > 0.0 => {
                let needed = (self.share * latency / cost).ceil();
                (needed as usize).clamp(1, self.max_in_flight)
            }
            (true, None, _) => 1,
            _ => self.max_in_flight,
        }
    }

    /// How many writes may be admitted at once: the limit of writes in flight, or, when that
    /// is the whole pool (zooid is fast, far away, or pacing is off), no count at all: the
    /// pool's workers and the room for prepared writes bound them then. A write is admitted
    /// when it is prepared, so a pool that admitted only as many as it has workers would make
    /// every worker wait for the preparer, and wake it once a write.
    pub fn admitted_at_most(&self) -> usize {
        match self.limit() {
            limit if limit >= self.max_in_flight => usize::MAX,
            limit => limit,
        }
    }

    /// Admits a write at `now`, counting it in flight, or answers how to wait: until a write
    /// in flight ends (`None`) or until an instant. An urgent write is always admitted; its
    /// budget pushes back the writes that follow.
    pub fn try_start(&mut self, now: Instant, urgent: bool) -> Result<(), Option<Instant>> {
        if !urgent {
            self.backlog_asked = Some(now);
        }
        // Fresh writes beyond the share push the backlog back, but never by more than
        // DEBT_SPACINGS budgets at today's spacing: a backlog that waited that long resumes,
        // however much fresh work went before and however much faster zooid got since (a
        // debt without a bound stops the backlog for minutes after a busy spell).
        let spacing = self.spacing();
        let most = now + spacing.saturating_mul(DEBT_SPACINGS);
        self.next_start = self.next_start.map(|next| next.min(most));
        if !urgent {
            if self.in_flight >= self.admitted_at_most() {
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

    /// A write was answered at `now` after `latency` (its timeout, when it timed out).
    pub fn write_took(&mut self, latency: Duration, now: Instant) {
        self.last_answer = Some(now);
        if let Some(users) = self.users.as_mut() {
            users.write(now);
            self.users_cost = users.cost_per_write(now);
        }
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

    /// A write was sent (answered or not later: [`write_ended`](Self::write_ended)).
    pub fn write_sent(&mut self) {
        self.writes_out += 1;
    }

    /// A write sent is over, answered or not.
    pub fn write_ended(&mut self) {
        self.writes_out = self.writes_out.saturating_sub(1);
    }

    /// Whether zooid-sync is quiet at `now`: no write out, and none answered for
    /// [`QUIET_AFTER`] or twice a write's latency, whichever is longer (zooid may still be
    /// busy with it). What users wait then is what they wait without zooid-sync.
    pub fn quiet(&self, now: Instant) -> bool {
        let latency = Duration::from_secs_f64(self.latency.unwrap_or(0.0).min(3600.0));
        let after = QUIET_AFTER.max(latency * 2);
        self.writes_out == 0
            && self
                .last_answer
                .is_none_or(|at| now.saturating_duration_since(at) >= after)
    }

    /// Whether relay users are to be asked at `now`: they can be, and a backlog asked for a
    /// write within [`SAMPLING_LINGER`].
    pub fn sampling(&self, now: Instant) -> bool {
        self.paced()
            && self.users.is_some()
            && self
                .backlog_asked
                .is_some_and(|at| now.saturating_duration_since(at) < SAMPLING_LINGER)
    }

    /// Whether a backlog should measure what users wait while zooid-sync is quiet before its
    /// next write: users are asked, it is quiet now, and the last measure is older than
    /// [`FLOOR_AGE`]. Answers true at most once per [`FLOOR_AGE`].
    pub fn wants_idle(&mut self, now: Instant) -> bool {
        let old = self
            .idle_asked
            .is_none_or(|at| now.saturating_duration_since(at) >= FLOOR_AGE);
        let wanted = self.paced() && self.users.is_some() && old && self.quiet(now);
        if wanted {
            self.idle_asked = Some(now);
        }
        wanted
    }

    /// A relay user's sample taken at `at`: the waits for two questions in a row
    /// ([`users`]).
    pub fn user_sample(&mut self, at: Instant, first: Duration, second: Duration) {
        let quiet = self.quiet(at);
        if let Some(users) = self.users.as_mut() {
            users.sample(at, first, second, quiet);
            self.users_cost = users.cost_per_write(at);
        }
    }

    /// What the pace says now: what `/metrics` shows.
    pub fn state(&self) -> PaceState {
        PaceState {
            limit: self.limit(),
            spacing: self.spacing(),
            write_latency: self.write_latency(),
            write_cost: self
                .write_cost()
                .and_then(|c| Duration::try_from_secs_f64(c).ok()),
            signal: self.signal(),
        }
    }

    /// What relay users' answers say now: idle, felt, zooid-sync's share of the core.
    pub fn users(&self, now: Instant) -> Option<UsersState> {
        let users = self.users.as_ref()?;
        Some(UsersState {
            idle: users.idle(),
            felt: users.felt(),
            busy_share: users.busy_share(now).map(|share| share.estimate),
            penalty: users.penalty(),
        })
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

/// What relay users' answers say, for `/metrics` and the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsersState {
    /// What a user waits while zooid-sync is quiet (median).
    pub idle: Option<Duration>,
    /// What a user waits now (median of the recent samples).
    pub felt: Option<Duration>,
    /// The share of zooid's core zooid-sync's writes take, over the last window.
    pub busy_share: Option<f64>,
    /// How much slower than their cost writes go because users feel them (1: not at all).
    pub penalty: f64,
}

/// What the pace says now, for `/metrics`, the log and `status`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceState {
    /// The most writes in flight.
    pub limit: usize,
    /// The spacing of a backlog's writes.
    pub spacing: Duration,
    /// A write's latency, smoothed.
    pub write_latency: Option<Duration>,
    /// What a write costs zooid's core in all, as the pace believes.
    pub write_cost: Option<Duration>,
    /// Where the pace learns it from.
    pub signal: Signal,
}

/// Whether the relay users' signal was found usable, unusable, or not tried yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Untried,
    Usable,
    Unusable,
}

/// How many answers in a row that are not a relay's NIP-11 document make the pace give up on
/// relay users (each from another relay: one may have just been deleted or deactivated).
pub const USER_REFUSALS: u32 = 3;

/// The [`Pace`] shared by the client (which observes every request) and the pool (which
/// admits writes through it, `infra::lanes::Lanes::next`), and the relay users' sampler
/// (which feeds it what users wait, `infra::sampler`).
#[derive(Debug)]
pub struct Pacer {
    pace: Mutex<Pace>,
    timeout: Duration,
    /// Whether the WARN about writes nearing the timeout was given (it is given again once
    /// they are fast again).
    warned: Mutex<bool>,
    /// Wakes the sampler when a backlog begins, and when the pacer stops; with `pace`'s lock.
    sampler: Condvar,
    sampler_waits: AtomicBool,
    stopped: AtomicBool,
    /// The host of a relay zooid serves, to ask as its user; and whether one is known.
    served: Mutex<Option<String>>,
    knows_served: AtomicBool,
    /// Whether relay users can be asked, and how many refusals in a row.
    verdict: Mutex<(Verdict, u32)>,
}

impl Pacer {
    /// A pacer with this pace, whose requests time out after `timeout`.
    pub fn with_pace(pace: Pace, timeout: Duration) -> Pacer {
        Pacer {
            pace: Mutex::new(pace),
            timeout,
            warned: Mutex::new(false),
            sampler: Condvar::new(),
            sampler_waits: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            served: Mutex::new(None),
            knows_served: AtomicBool::new(false),
            verdict: Mutex::new((Verdict::Untried, 0)),
        }
    }

    /// The pace itself, for the pool to admit writes by. Held briefly: every answer from
    /// zooid takes it too.
    pub(crate) fn pace(&self) -> MutexGuard<'_, Pace> {
        self.pace.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A write admitted by the pace is over; answers what the pace says now.
    pub(crate) fn end_write(&self) -> PaceState {
        let mut pace = self.pace();
        pace.finished();
        pace.state()
    }

    /// Whether a backlog should measure the floor before its next write.
    pub fn wants_floor(&self) -> bool {
        self.pace().wants_floor(Instant::now())
    }

    /// Whether a backlog should measure what relay users wait while zooid-sync is quiet
    /// before its next write.
    pub fn wants_idle(&self) -> bool {
        self.pace().wants_idle(Instant::now())
    }

    /// A write leaves for zooid now.
    pub fn write_sent(&self) {
        self.pace().write_sent();
    }

    /// A request sent is over: a write if `write` (its [`write_sent`](Self::write_sent)
    /// is over), answered after `answered` if zooid answered. Only an answer says what
    /// zooid's work costs.
    pub fn request_ended(&self, write: bool, answered: Option<Duration>) {
        match answered {
            Some(latency) => self.learn(write, latency, false, write),
            None if write => self.pace().write_ended(),
            None => {}
        }
    }

    /// A request answered (or failed) after `latency`; `write` says whether it was a write,
    /// `timed_out` whether it ran into the timeout.
    pub fn observe(&self, write: bool, latency: Duration, timed_out: bool) {
        self.learn(write, latency, timed_out, false);
    }

    /// What a request's end teaches, under one hold of the lock: its latency (`timed_out`:
    /// at least the timeout), and, if `ended`, that a write sent is over.
    fn learn(&self, write: bool, latency: Duration, timed_out: bool, ended: bool) {
        let latency = if timed_out {
            latency.max(self.timeout)
        } else {
            latency
        };
        let now = Instant::now();
        // The 90th percentile can cross half the timeout upward only with a write slower than
        // that; downward only while the WARN stands. Otherwise it is not worth sorting.
        let judge = write
            && (latency > self.timeout / 2
                || *self.warned.lock().unwrap_or_else(PoisonError::into_inner));
        let p90 = {
            let mut pace = self.pace();
            if ended {
                pace.write_ended();
            }
            match write {
                true => pace.write_took(latency, now),
                false if !timed_out => pace.read_took(latency, now),
                false => {}
            }
            judge.then(|| pace.p90()).flatten()
        };
        if judge {
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

    /// What the pace says now: what `/metrics` shows.
    pub fn state(&self) -> PaceState {
        self.pace().state()
    }

    /// What relay users' answers say now, when they are asked.
    pub fn users_state(&self) -> Option<UsersState> {
        self.pace().users(Instant::now())
    }

    // The relay users' side: which host to ask, what their answers say, and when to ask.

    /// zooid serves relay `host` now (a write of the relay, active, was accepted): a host to
    /// ask as a relay user. The first known is kept until it is refused.
    pub fn served(&self, host: &str) {
        if self.knows_served.load(Ordering::Relaxed) {
            return;
        }
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        if served.is_none() {
            *served = Some(host.to_string());
        }
        self.knows_served.store(true, Ordering::Relaxed);
    }

    /// The host to ask as a relay user, if one is known.
    pub fn served_host(&self) -> Option<String> {
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A relay user's sample started at `at`: the waits for two questions in a row. The first
    /// one usable says so in the log, once.
    pub fn user_sample(&self, at: Instant, first: Duration, second: Duration, host: &str) {
        self.pace().user_sample(at, first, second);
        self.user_answered(host, first);
    }

    /// Asking as a user of `host` got its NIP-11 document after `wait`: relay users can be
    /// asked, which the log says once.
    pub fn user_answered(&self, host: &str, wait: Duration) {
        let mut verdict = self.verdict.lock().unwrap_or_else(PoisonError::into_inner);
        if verdict.0 == Verdict::Untried {
            log::info!(
                "catch-ups are paced by what zooid's relay users feel: zooid answers {host}'s \
                 NIP-11 document in {} (SYNC_PACING=users)",
                crate::words::show_duration(round_ms_up(wait))
            );
        }
        *verdict = (Verdict::Usable, 0);
    }

    /// Asking as a user of `host` did not get its NIP-11 document: `why`. The host is
    /// forgotten (the next one zooid serves is asked); after [`USER_REFUSALS`] in a row,
    /// relay users are not asked any more and the pace goes by zooid's answers alone, which
    /// the log says once. Answers whether it gave up.
    pub fn user_refused(&self, host: &str, why: &str) -> bool {
        {
            let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
            if served.as_deref() == Some(host) {
                *served = None;
                self.knows_served.store(false, Ordering::Relaxed);
            }
        }
        let mut verdict = self.verdict.lock().unwrap_or_else(PoisonError::into_inner);
        verdict.1 += 1;
        if verdict.1 < USER_REFUSALS || verdict.0 == Verdict::Unusable {
            log::debug!("asking zooid as a user of {host}: {why}");
            return false;
        }
        verdict.0 = Verdict::Unusable;
        drop(verdict);
        self.pace().answers_only();
        log::warn!(
            "zooid does not answer a relay user's NIP-11 request at its API's address ({why}, \
             asking for {host}): catch-ups are paced by zooid's answers alone, which do not \
             show the work zooid does after answering. A proxy in front of zooid may route relay \
             hosts elsewhere; set SYNC_PACING=answers to stop asking"
        );
        true
    }

    /// Whether relay users are asked: pacing is on, by [`Signal::Users`], and they were not
    /// found unusable.
    pub fn asks_users(&self) -> bool {
        let pace = self.pace();
        pace.paced() && pace.users.is_some()
    }

    /// Whether a host to ask as a relay user is known; cheap, for every sync.
    pub fn knows_served(&self) -> bool {
        self.knows_served.load(Ordering::Relaxed)
    }

    /// Wakes the sampler if it sleeps for want of a backlog; the pool calls it when a backlog
    /// asked for a write.
    pub(crate) fn backlog_asked(&self) {
        if self.sampler_waits.swap(false, Ordering::AcqRel) {
            let _pace = self.pace();
            self.sampler.notify_all();
        }
    }

    /// The sampler's sleep: until `due` while relay users are to be asked, for as long as
    /// they are not. Answers false once the pacer is stopped.
    pub(crate) fn sampler_wait(&self, due: Instant) -> bool {
        let mut pace = self.pace();
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return false;
            }
            let now = Instant::now();
            if !pace.sampling(now) {
                self.sampler_waits.store(true, Ordering::Release);
                pace = self
                    .sampler
                    .wait(pace)
                    .unwrap_or_else(PoisonError::into_inner);
            } else if now >= due {
                return true;
            } else {
                pace = self
                    .sampler
                    .wait_timeout(pace, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }

    /// Ends the sampler's sleep for good.
    pub(crate) fn stop_sampler(&self) {
        self.stopped.store(true, Ordering::Release);
        let _pace = self.pace();
        self.sampler.notify_all();
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A short wait for people: to 0.1 ms, never shown as nothing.
fn round_ms_up(d: Duration) -> Duration {
    Duration::from_micros((d.as_micros() as u64).div_ceil(100).max(1) * 100)
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
        p.write_took(61 * MS, Instant::now());
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
        p.write_took(101 * MS, Instant::now());
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
        p.write_took(101 * MS, Instant::now()); // 400 ms a write
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
        p.write_took(52 * MS, Instant::now());
        assert_eq!(p.spacing(), 8 * MS);
        assert_eq!(p.limit(), 4, "ceil(0.25 x 52 / 2) = 7, the pool's 4");
        let mut q = Pace::new(0.25, 8);
        q.read_took(50 * MS, t0);
        q.write_took(60 * MS, Instant::now());
        assert_eq!(q.limit(), 2, "ceil(0.25 x 60 / 10)");
    }

    #[test]
    fn no_share_means_no_pacing() {
        let t0 = Instant::now();
        let mut p = Pace::new(0.0, 3);
        p.write_took(500 * MS, Instant::now());
        assert_eq!(p.spacing(), Duration::ZERO);
        assert_eq!(p.limit(), 3);
        assert!(!p.wants_floor(t0));
        // Nothing but the pool (its workers, its room for prepared writes) holds writes back.
        assert_eq!(p.admitted_at_most(), usize::MAX);
        for _ in 0..10 {
            assert_eq!(p.try_start(t0, false), Ok(()));
        }
    }

    #[test]
    fn writes_are_prepared_ahead_only_when_the_pace_allows_the_whole_pool() {
        let t0 = Instant::now();
        // zooid far away, its work small: the pace allows every worker, and writes are
        // prepared ahead of them.
        let mut far = Pace::new(0.25, 4);
        far.read_took(50 * MS, t0);
        far.write_took(52 * MS, t0);
        assert_eq!(far.limit(), 4);
        assert_eq!(far.admitted_at_most(), usize::MAX);
        // zooid slow: one at a time, none prepared ahead (it would be sent beside the other).
        let mut slow = Pace::new(0.25, 4);
        slow.read_took(MS, t0);
        slow.write_took(61 * MS, t0);
        assert_eq!(slow.limit(), 1);
        assert_eq!(slow.admitted_at_most(), 1);
        assert_eq!(slow.try_start(t0, false), Ok(()));
        assert_eq!(slow.try_start(t0, false), Err(None));
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
        p.write_took(43 * MS, Instant::now());
        assert_eq!(p.spacing(), 160 * MS, "(43 - 3) / 0.25");
        let old = t0 + FLOOR_AGE;
        assert!(p.wants_floor(old));
        p.read_took(7 * MS, old);
        p.write_took(47 * MS, Instant::now());
        // work: 40 + 0.3 x (40 - 40) = 40 ms, the floor being 7 now.
        assert_eq!(p.spacing(), 160 * MS);
    }

    #[test]
    fn writes_are_smoothed_and_the_90th_percentile_is_of_recent_ones() {
        let mut p = Pace::new(0.5, 4);
        assert_eq!(p.p90(), None);
        p.write_took(100 * MS, Instant::now());
        p.write_took(200 * MS, Instant::now());
        // 100 + 0.3 x (200 - 100) = 130 ms of work, no floor.
        assert_eq!(p.spacing(), 260 * MS);
        assert_eq!(p.write_latency(), Some(130 * MS));
        for n in 1..=40u32 {
            p.write_took(n * MS, Instant::now());
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
        p.write_took(5 * MS, Instant::now());
        assert_eq!(p.spacing(), Duration::ZERO, "no work measurable");
        assert_eq!(p.limit(), 4);
    }

    #[test]
    fn a_timed_out_write_costs_the_timeout_and_a_timed_out_read_says_nothing() {
        let pacer = Pacer::with_pace(Pace::new(0.5, 4), 400 * MS);
        assert!(pacer.wants_floor());
        pacer.observe(false, 300 * MS, true);
        assert!(!pacer.wants_floor(), "asked once");
        pacer.observe(true, 100 * MS, true);
        let PaceState {
            spacing,
            write_latency: latency,
            ..
        } = pacer.state();
        assert_eq!(latency, Some(400 * MS), "at least the timeout");
        assert_eq!(
            spacing,
            800 * MS,
            "no floor was measured by the failed read"
        );
    }

    #[test]
    fn writes_near_the_timeout_are_warned_about_once() {
        let pacer = Pacer::with_pace(Pace::new(0.25, 4), 1000 * MS);
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
