//! What zooid's relay users feel, learned by asking as one of them.
//!
//! zooid answers a relay user's request for the relay's NIP-11 document (`GET /` with the
//! relay's host and `Accept: application/nostr+json`) from the same process, and on the same
//! core, as zooid-sync's writes, for a fraction of a millisecond of its time. So while a
//! backlog is paced, zooid-sync asks it as a user would, at random moments (about
//! [`SAMPLES_PER_SECOND`] a second), and learns two things:
//!
//! - **What users feel.** The median wait now against the median while zooid-sync sends
//!   nothing (*idle*): the difference is the *inflation*, which the pacer keeps under
//!   `SYNC_USER_DELAY` ([`UserSignal::penalty`]).
//! - **What a write costs zooid, in all.** Each moment is asked twice in a row. A core busy with
//!   other work serves a newcomer only when the current slice ends: the first question waits
//!   for that, and the second, sent the instant the first is answered, lands at the start of
//!   the busy work's next slice and waits almost a whole one. So the second answer is late
//!   (by more than [`UserSignal::thresholds`]) when the core was busy with work longer than a
//!   slice (a write), and the first one, most of the time, when it was busy with less. Asked
//!   at random moments, the fraction of samples with a late answer is the fraction of time
//!   the core is busy (Poisson arrivals see time averages). Less that fraction while zooid-sync sends nothing
//!   (the *base*: zooid's own users and housekeeping), it is zooid-sync's share of the core;
//!   times the window and divided by the writes in it, it is what one write costs zooid,
//!   including the work zooid does after it has answered (it reloads the relay), which the
//!   answer's latency never shows.
//!
//! "While zooid-sync sends nothing" is a *quiet* moment: no write in flight and none answered
//! for a while (the pace decides, [`super::Pace::quiet`]). Quiet samples, the last
//! [`QUIET_KEPT`], give the idle wait and the base; every sample of the last [`WINDOW`] gives
//! the busy fraction. Pure: the caller passes the time, so a test can replay any history.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many user samples (each two questions in a row) a second a paced backlog asks for.
pub const SAMPLES_PER_SECOND: f64 = 20.0;

/// How far back the busy fraction and the writes are counted: 400 samples, whose busy
/// fraction has a standard error of about 0.02.
pub const WINDOW: Duration = Duration::from_secs(20);

/// How many quiet samples are kept for the idle wait and the base.
pub const QUIET_KEPT: usize = 256;

/// How many standard errors above its estimate a write's cost is taken, so that the share is
/// held in most windows, not only on average.
const MARGIN: f64 = 0.5;

/// How many recent samples the felt wait is the median of.
const FELT_KEPT: usize = 40;

/// The fewest samples in the window that say what a write costs.
pub const MIN_SAMPLES: u32 = 20;

/// The fewest quiet samples that say what the idle wait is.
const MIN_QUIET: usize = 5;

/// The least lateness that counts as a busy core: above the jitter of a request on loopback.
const MIN_THRESHOLD: Duration = Duration::from_micros(250);

/// How much the users' penalty grows for each second users wait more than the target, and
/// shrinks for each second they wait less than half of it.
const PENALTY_UP: f64 = 1.5;
const PENALTY_DOWN: f64 = 1.25;
const MAX_PENALTY: f64 = 64.0;

/// One second of the window (seconds counted from the signal's first event): the samples
/// taken in it and how many found the core busy, the quiet ones among them and how many of
/// those found it busy, and zooid-sync's writes answered in it.
#[derive(Debug, Clone, Copy, Default)]
struct Second {
    index: u64,
    samples: u32,
    busy: u32,
    quiet: u32,
    quiet_busy: u32,
    writes: u32,
}

/// The fewest quiet samples in the window that say on their own what zooid does without
/// zooid-sync; with fewer (writes close together leave no quiet moment), the last
/// [`QUIET_KEPT`] say it.
const MIN_QUIET_IN_WINDOW: u32 = 30;

/// zooid-sync's share of zooid's core over a window, as relay users' samples tell it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BusyShare {
    /// The share.
    pub estimate: f64,
    /// Its standard error.
    pub error: f64,
    /// How many samples it rests on.
    pub samples: u32,
}

/// A quiet sample: the two waits, and whether it found the core busy.
#[derive(Debug, Clone, Copy)]
struct Quiet {
    first: Duration,
    second: Duration,
    busy: bool,
}

/// What relay users' answers say, over the last [`WINDOW`].
#[derive(Debug, Clone)]
pub struct UserSignal {
    /// The most a catch-up may add to a user's median wait (`SYNC_USER_DELAY`).
    target: Duration,
    quiet: VecDeque<Quiet>,
    /// Where the seconds are counted from.
    origin: Option<Instant>,
    seconds: VecDeque<Second>,
    felt: VecDeque<Duration>,
    /// What slows writes beyond their cost while users wait more than the target (1: nothing).
    penalty: f64,
    /// When the penalty last moved.
    penalty_at: Option<Instant>,
}

impl UserSignal {
    /// A signal that keeps users' median inflation under `target`.
    pub fn new(target: Duration) -> UserSignal {
        UserSignal {
            target,
            quiet: VecDeque::with_capacity(QUIET_KEPT),
            origin: None,
            seconds: VecDeque::new(),
            felt: VecDeque::with_capacity(FELT_KEPT),
            penalty: 1.0,
            penalty_at: None,
        }
    }

    /// A sample taken at `now`: the waits of two questions in a row, and whether zooid-sync
    /// was quiet then. Whether it found the core busy is judged now, by the quiet waits so
    /// far (its own included).
    pub fn sample(&mut self, now: Instant, first: Duration, second: Duration, quiet: bool) {
        if quiet {
            if self.quiet.len() == QUIET_KEPT {
                self.quiet.pop_front();
            }
            self.quiet.push_back(Quiet {
                first,
                second,
                busy: false,
            });
        }
        let busy = self.busy(first, second);
        if let Some(last) = self.quiet.back_mut().filter(|_| quiet) {
            last.busy = busy;
        }
        let slot = self.second_at(now);
        slot.samples += 1;
        slot.busy += u32::from(busy);
        slot.quiet += u32::from(quiet);
        slot.quiet_busy += u32::from(quiet && busy);
        if self.felt.len() == FELT_KEPT {
            self.felt.pop_front();
        }
        self.felt.push_back(first);
        self.move_penalty(now);
    }

    /// One of zooid-sync's writes was answered at `now`.
    pub fn write(&mut self, now: Instant) {
        self.second_at(now).writes += 1;
    }

    /// The index of the second that holds `now`.
    fn index(&self, now: Instant) -> u64 {
        self.origin
            .map_or(0, |origin| now.saturating_duration_since(origin).as_secs())
    }

    /// The window's second that holds `now`, made if need be; seconds older than the window
    /// are forgotten.
    fn second_at(&mut self, now: Instant) -> &mut Second {
        self.origin.get_or_insert(now);
        let index = self.index(now);
        while self
            .seconds
            .front()
            .is_some_and(|s| s.index + WINDOW.as_secs() <= index)
        {
            self.seconds.pop_front();
        }
        if self.seconds.is_empty() {
            // Nothing asked for a whole window: what users felt then is history.
            self.felt.clear();
        }
        if self.seconds.back().is_none_or(|s| s.index != index) {
            self.seconds.push_back(Second {
                index,
                ..Second::default()
            });
        }
        self.seconds.back_mut().expect("pushed")
    }

    /// What a user waits while zooid-sync sends nothing: the median of the quiet samples'
    /// first questions, once there are enough.
    pub fn idle(&self) -> Option<Duration> {
        (self.quiet.len() >= MIN_QUIET).then(|| median(self.quiet.iter().map(|q| q.first)))
    }

    /// The waits above which the first and the second question say the core was busy: the
    /// upper quartile of each while quiet, plus half of it or [`MIN_THRESHOLD`], whichever is
    /// more. (Above the quartile, not the median: a loaded client's own jitter would make
    /// many idle answers look late.)
    pub fn thresholds(&self) -> Option<(Duration, Duration)> {
        if self.quiet.len() < MIN_QUIET {
            return None;
        }
        let above = |idle: Duration| idle + (idle / 2).max(MIN_THRESHOLD);
        Some((
            above(quartile(self.quiet.iter().map(|q| q.first))),
            above(quartile(self.quiet.iter().map(|q| q.second))),
        ))
    }

    /// Whether a sample found zooid's core busy: either question was late. The second one
    /// sees work of many slices (a write); the first also sees work shorter than a slice,
    /// which the second can miss. Unknown (false) until the quiet waits are known.
    fn busy(&self, first: Duration, second: Duration) -> bool {
        self.thresholds()
            .is_some_and(|(one, two)| first > one || second > two)
    }

    /// The fraction of quiet samples that found the core busy at `now`, and how many they
    /// are: what zooid does without zooid-sync (its own users and housekeeping, and the
    /// measure's noise, which changes with the client's load). The quiet samples of the
    /// window when they are enough, so that it is measured beside what it is taken from;
    /// else the last [`QUIET_KEPT`].
    pub fn base(&self, now: Instant) -> Option<(f64, u32)> {
        self.thresholds()?;
        let (quiet, busy) = self
            .window(now)
            .fold((0, 0), |(q, b), s| (q + s.quiet, b + s.quiet_busy));
        if quiet >= MIN_QUIET_IN_WINDOW {
            return Some((f64::from(busy) / f64::from(quiet), quiet));
        }
        let busy = self.quiet.iter().filter(|q| q.busy).count();
        let quiet = self.quiet.len();
        Some((busy as f64 / quiet as f64, quiet as u32))
    }

    /// What users wait now: the median of the recent samples' first questions.
    pub fn felt(&self) -> Option<Duration> {
        (self.felt.len() >= MIN_QUIET).then(|| median(self.felt.iter().copied()))
    }

    /// How much more than idle users wait now.
    pub fn inflation(&self) -> Option<Duration> {
        Some(self.felt()?.saturating_sub(self.idle()?))
    }

    /// The share of zooid's core that zooid-sync's writes took over the window at `now`, as
    /// the samples tell it. A sample finds the core busy with zooid-sync's work (share `u`) or,
    /// apart from it, with what the quiet samples find (`base`: zooid's own users and the
    /// measure's noise): `busy = u + (1 - u) × base`, so `u = (busy - base) / (1 - base)`.
    pub fn busy_share(&self, now: Instant) -> Option<BusyShare> {
        let (base, quiet) = self.base(now)?;
        let (samples, busy) = self
            .window(now)
            .fold((0, 0), |(n, b), s| (n + s.samples, b + s.busy));
        if samples < MIN_SAMPLES {
            return None;
        }
        let busy = f64::from(busy) / f64::from(samples);
        let free = (1.0 - base).max(0.01);
        // Both fractions are counts of yes-or-no samples: their standard errors.
        let variance =
            busy * (1.0 - busy) / f64::from(samples) + base * (1.0 - base) / f64::from(quiet);
        Some(BusyShare {
            estimate: ((busy - base) / free).clamp(0.0, 1.0),
            error: variance.sqrt() / free,
            samples,
        })
    }

    /// What one write costs zooid's core, in seconds, as the window at `now` tells it, and the
    /// samples it rests on: the busy share ([`MARGIN`] standard errors above its estimate, so
    /// that the share is held in most windows, not only on average), times the window's
    /// length, over the writes in it.
    pub fn cost_per_write(&self, now: Instant) -> Option<(f64, u32)> {
        let share = self.busy_share(now)?;
        let writes: u32 = self.window(now).map(|s| s.writes).sum();
        let first = self.window(now).next()?.index;
        let start = self.origin? + Duration::from_secs(first);
        let span = now
            .saturating_duration_since(start)
            .max(Duration::from_secs(1));
        let most = (share.estimate + MARGIN * share.error).min(1.0);
        (writes > 0).then(|| (most * span.as_secs_f64() / f64::from(writes), share.samples))
    }

    /// The seconds of the window that ends at `now`.
    fn window(&self, now: Instant) -> impl Iterator<Item = &Second> {
        let index = self.index(now);
        self.seconds
            .iter()
            .filter(move |s| s.index + WINDOW.as_secs() > index)
    }

    /// How much slower than their cost writes go because users feel them (1: not at all).
    pub fn penalty(&self) -> f64 {
        self.penalty
    }

    /// At most once a second: grows the penalty while users wait more than the target above
    /// idle, shrinks it while they wait less than half of that.
    fn move_penalty(&mut self, now: Instant) {
        if self
            .penalty_at
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        let Some(inflation) = self.inflation() else {
            return;
        };
        self.penalty_at = Some(now);
        if inflation > self.target {
            self.penalty = (self.penalty * PENALTY_UP).min(MAX_PENALTY);
        } else if inflation < self.target / 2 {
            self.penalty = (self.penalty / PENALTY_DOWN).max(1.0);
        }
    }
}

/// The median of some waits (the upper one of an even count).
fn median(waits: impl Iterator<Item = Duration>) -> Duration {
    at_fraction(waits, 1, 2)
}

/// The upper quartile of some waits.
fn quartile(waits: impl Iterator<Item = Duration>) -> Duration {
    at_fraction(waits, 3, 4)
}

/// The wait `numerator / denominator` of the way up some waits, sorted.
fn at_fraction(
    waits: impl Iterator<Item = Duration>,
    numerator: usize,
    denominator: usize,
) -> Duration {
    let mut sorted: Vec<Duration> = waits.collect();
    sorted.sort_unstable();
    let at = sorted.len() * numerator / denominator;
    sorted.get(at).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);
    const MS: Duration = Duration::from_millis(1);

    /// Quiet samples of `wait` each, 50 ms apart from `t`; answers the time after them.
    fn quiet(s: &mut UserSignal, t: Instant, n: usize, wait: Duration) -> Instant {
        for k in 0..n {
            s.sample(t + 50 * MS * k as u32, wait, wait, true);
        }
        t + 50 * MS * n as u32
    }

    #[test]
    fn nothing_is_known_before_enough_quiet_samples() {
        let t = Instant::now();
        let mut s = UserSignal::new(MS);
        assert_eq!(s.idle(), None);
        assert_eq!(s.thresholds(), None);
        let t = quiet(&mut s, t, MIN_QUIET - 1, 400 * US);
        assert_eq!(s.idle(), None);
        assert_eq!(s.busy_share(t), None);
        quiet(&mut s, t, 1, 400 * US);
        assert_eq!(s.idle(), Some(400 * US));
        assert_eq!(
            s.thresholds(),
            Some((650 * US, 650 * US)),
            "400 us and the least margin, 250 us"
        );
        assert_eq!(s.base(t), Some((0.0, 5)));
        let mut far = UserSignal::new(MS);
        quiet(&mut far, t, 8, 10 * MS);
        assert_eq!(
            far.thresholds(),
            Some((15 * MS, 15 * MS)),
            "half of a far zooid's wait"
        );
    }

    /// zooid-sync's writes keep the core busy a quarter of the time: a quarter of the samples
    /// find it busy, four writes a second answered: 62.5 ms a write.
    #[test]
    fn the_busy_fraction_over_the_writes_is_the_cost_of_a_write() {
        let t0 = Instant::now();
        let mut s = UserSignal::new(MS);
        quiet(&mut s, t0, 10, 400 * US);
        let t = t0 + WINDOW;
        for k in 0..200u32 {
            let at = t + 50 * MS * k;
            let second = if k % 4 == 0 { 2 * MS } else { 400 * US };
            s.sample(at, 400 * US, second, false);
            if k % 5 == 0 {
                s.write(at);
            }
        }
        // The window holds the 200 samples of the last 10 s, 50 of them busy, and 40 writes;
        // the quiet second, a window earlier, is out of it.
        let now = t + Duration::from_millis(9_999);
        let share = s.busy_share(now).unwrap();
        assert_eq!(share.samples, 200);
        assert!((share.estimate - 0.25).abs() < 1e-9, "{share:?}");
        let error = (0.25f64 * 0.75 / 200.0).sqrt();
        assert!((share.error - error).abs() < 1e-9, "{share:?}");
        // A write costs 62.5 ms by the estimate; paced by half a standard error above it.
        let (cost, _) = s.cost_per_write(now).unwrap();
        let most = (0.25 + MARGIN * error) * 9.999 / 40.0;
        assert!((cost - most).abs() < 1e-6, "{cost} for {most}");
        assert!(cost > 0.0625 && cost < 0.0625 * 1.15);
    }

    /// Every sample counts toward the busy fraction, the quiet ones too, and the base is taken
    /// off: what zooid-sync's writes cost over the whole window.
    #[test]
    fn what_zooid_does_without_zooid_sync_is_not_counted_as_its_cost() {
        let t0 = Instant::now();
        let mut s = UserSignal::new(MS);
        // For 2 s, one quiet sample in ten finds the core busy: zooid's own users. (A sample
        // before the fifth quiet one cannot be judged: it would not count as busy.)
        let mut t = t0;
        for k in 0..40u32 {
            let second = if k % 10 == 9 { 3 * MS } else { 400 * US };
            s.sample(t, 400 * US, second, true);
            t += 50 * MS;
        }
        assert_eq!(s.base(t), Some((0.1, 40)));
        // Then for 5 s 30 % are busy, with two writes a second. One in ten would be found busy
        // anyway: zooid-sync's writes took u of the core where 0.3 = u + (1 - u) x 0.1.
        for k in 0..100u32 {
            let second = if k % 10 < 3 { 3 * MS } else { 400 * US };
            s.sample(t, 400 * US, second, false);
            if k % 10 == 0 {
                s.write(t);
            }
            t += 50 * MS;
        }
        let share = s.busy_share(t).unwrap();
        assert_eq!(share.samples, 140);
        // Over the whole window (7 s, the quiet part too): 34 busy of 140.
        let busy = 34.0 / 140.0;
        let over_window = (busy - 0.1) / 0.9;
        assert!((share.estimate - over_window).abs() < 1e-9, "{share:?}");
        let error = (busy * (1.0 - busy) / 140.0 + 0.1 * 0.9 / 40.0).sqrt() / 0.9;
        assert!((share.error - error).abs() < 1e-9, "{share:?}");
        // The estimate is 2/9 of the 5 s of writes, 10 writes: 1/9 s a write.
        let (cost, _) = s.cost_per_write(t).unwrap();
        assert!((over_window * 7.0 / 10.0 - 1.0 / 9.0).abs() < 1e-9);
        assert!(
            (cost - (over_window + MARGIN * error) * 7.0 / 10.0).abs() < 1e-9,
            "{cost}"
        );
        assert_eq!(s.busy_share(t + WINDOW), None, "forgotten");
    }

    /// The client's own load makes answers late too, and it changes: the base is what the
    /// quiet samples of the window found, when there are enough of them, else the last ones.
    #[test]
    fn the_base_is_measured_beside_what_it_is_taken_from() {
        let t0 = Instant::now();
        let mut s = UserSignal::new(MS);
        let mut t = quiet(&mut s, t0, 10, 400 * US);
        // A noisy spell, quiet: one in five late (fewer than a quarter, so the thresholds
        // stay where they were).
        for k in 0..100u32 {
            let wait = if k % 5 == 0 { 3 * MS } else { 400 * US };
            s.sample(t, wait, wait, true);
            t += 50 * MS;
        }
        assert_eq!(
            s.base(t),
            Some((20.0 / 110.0, 110)),
            "10 clean and 100 noisy in the window"
        );
        // A window later, 20 quiet samples, none late: too few on their own; the last 130.
        t += WINDOW;
        for _ in 0..20 {
            s.sample(t, 400 * US, 400 * US, true);
            t += 50 * MS;
        }
        assert_eq!(s.base(t), Some((20.0 / 130.0, 130)));
        // Ten more make the window's own.
        for _ in 0..10 {
            s.sample(t, 400 * US, 400 * US, true);
            t += 50 * MS;
        }
        assert_eq!(s.base(t), Some((0.0, 30)));
    }

    #[test]
    fn a_sample_is_busy_when_either_question_is_late_and_only_then() {
        let t0 = Instant::now();
        let mut s = UserSignal::new(MS);
        for k in 0..10u32 {
            s.sample(t0 + 50 * MS * k, 400 * US, 300 * US, true);
        }
        assert_eq!(s.thresholds(), Some((650 * US, 550 * US)));
        assert!(
            s.busy(651 * US, 300 * US),
            "the first late: work shorter than a slice"
        );
        assert!(
            s.busy(400 * US, 551 * US),
            "the second late: a write's next slice"
        );
        assert!(!s.busy(650 * US, 550 * US), "at the thresholds: not late");
        assert!(!s.busy(400 * US, 300 * US));
    }

    #[test]
    fn the_idle_wait_is_the_median_and_the_threshold_above_the_upper_quartile() {
        let t0 = Instant::now();
        let mut s = UserSignal::new(MS);
        for k in 1..=8u32 {
            s.sample(t0 + 50 * MS * k, 100 * US * k, 100 * US * k, true);
        }
        assert_eq!(s.idle(), Some(500 * US), "the upper median of 100..800 us");
        assert_eq!(
            s.thresholds(),
            Some((1050 * US, 1050 * US)),
            "700 us, the upper quartile, and half of it"
        );
    }

    #[test]
    fn each_second_counts_on_its_own_and_the_window_ends_exactly() {
        let t0 = Instant::now();
        let mut s = UserSignal::new(MS);
        quiet(&mut s, t0, 10, 400 * US);
        // 20 samples in one second, 10 s later: they count in their own second.
        let later = t0 + Duration::from_secs(10);
        for k in 0..20u32 {
            s.sample(later + 10 * MS * k, 400 * US, 400 * US, false);
        }
        // 15 s on, the window holds their second and not the quiet one.
        let on = later + Duration::from_secs(15);
        assert_eq!(s.busy_share(on).map(|b| b.samples), Some(20));
        assert_eq!(s.cost_per_write(on), None, "samples but no writes: no cost");
        // A second belongs to the window until the window has passed it, to the instant.
        assert_eq!(
            s.busy_share(later + WINDOW - MS).map(|b| b.samples),
            Some(20)
        );
        assert_eq!(s.busy_share(later + WINDOW), None);
    }

    #[test]
    fn the_penalty_moves_a_step_a_second_at_the_target_s_edges() {
        let t0 = Instant::now();
        let mut s = UserSignal::new(MS);
        // Idle 400 us; the penalty last moved (stayed at 1) with the fifth quiet sample.
        quiet(&mut s, t0, 10, 400 * US);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Users feel `wait`: forty samples (the recent ones all), then one more a second after
        // the last move, when the penalty may move.
        let feel = |s: &mut UserSignal, from: u64, wait: Duration| {
            for _ in 0..40 {
                s.sample(at(from), wait, wait, false);
            }
            s.sample(at(from + 700), wait, wait, false);
            s.penalty()
        };
        assert_eq!(
            feel(&mut s, 500, 2400 * US),
            1.5,
            "2 ms over: up, a second on the dot"
        );
        assert_eq!(
            feel(&mut s, 1500, 1400 * US),
            1.5,
            "the target itself: held"
        );
        assert_eq!(feel(&mut s, 2500, 900 * US), 1.5, "half the target: held");
        assert_eq!(
            feel(&mut s, 3500, 400 * US),
            1.5 / PENALTY_DOWN,
            "less: one step down"
        );
    }

    #[test]
    fn a_cost_needs_samples_and_writes() {
        let t0 = Instant::now();
        let mut s = UserSignal::new(MS);
        let mut t = quiet(&mut s, t0, 10, 400 * US);
        assert_eq!(s.cost_per_write(t), None, "no writes");
        for _ in 0..(MIN_SAMPLES - 11) {
            s.sample(t, 400 * US, 400 * US, false);
            t += 50 * MS;
        }
        s.write(t);
        assert_eq!(s.cost_per_write(t), None, "19 samples");
        s.sample(t, 400 * US, 400 * US, false);
        assert_eq!(s.cost_per_write(t).map(|c| c.1), Some(MIN_SAMPLES));
        assert_eq!(
            s.cost_per_write(t).map(|c| c.0),
            Some(0.0),
            "nothing busy: free"
        );
    }

    #[test]
    fn users_waiting_more_than_the_target_slow_writes_until_they_do_not() {
        let t0 = Instant::now();
        let mut s = UserSignal::new(MS);
        let mut t = quiet(&mut s, t0, 10, 400 * US);
        assert_eq!(s.inflation(), Some(Duration::ZERO));
        assert_eq!(s.penalty(), 1.0);
        let mut run = |s: &mut UserSignal, n: usize, wait: Duration| {
            for _ in 0..n {
                s.sample(t, wait, wait, false);
                t += 50 * MS;
            }
        };
        // Users wait 2 ms more than idle, for three seconds: the penalty grows every second.
        run(&mut s, 60, 2400 * US);
        assert_eq!(s.inflation(), Some(2 * MS));
        assert_eq!(s.penalty(), 1.5 * 1.5 * 1.5);
        // Between half the target and the target, once the median has moved: held.
        run(&mut s, 40, 1100 * US);
        assert_eq!(s.inflation(), Some(700 * US));
        let held = s.penalty();
        run(&mut s, 60, 1100 * US);
        assert_eq!(s.penalty(), held);
        // Less than half of it: back to the cost alone, a step a second.
        run(&mut s, 200, 400 * US);
        assert_eq!(s.penalty(), 1.0);
        // Users who wait and wait: bounded.
        run(&mut s, 2000, 900 * MS);
        assert_eq!(s.penalty(), MAX_PENALTY);
    }

    #[test]
    fn a_window_without_samples_forgets_what_users_felt() {
        let t0 = Instant::now();
        let mut s = UserSignal::new(MS);
        let t = quiet(&mut s, t0, 10, 400 * US);
        for k in 0..10u32 {
            s.sample(t + 50 * MS * k, 5 * MS, 5 * MS, false);
        }
        assert_eq!(s.felt(), Some(5 * MS));
        s.write(t + WINDOW * 3);
        assert_eq!(s.felt(), None, "a window later, nothing felt is known");
        assert_eq!(s.idle(), Some(400 * US), "idle is kept");
    }
}
