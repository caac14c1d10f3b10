//! The circuit breaker: "zooid is unavailable" is not "zooid refused this relay".
//!
//! A relay's failure counts toward giving up only when zooid refused that relay. When zooid
//! itself is down (no connection, a timeout, TLS or DNS trouble, 502/503/504, 429), retrying
//! every relay on its own schedule only hammers it, and giving up on relays because of it
//! leaves them unsynced for good. So:
//!
//! - A sync that fails with an unavailability error asks for a **verdict**: has zooid answered
//!   anything (any request, any relay) since this request started? Then zooid is up and the
//!   failure is this relay's own: it counts like any refusal. If not, one **probe** is sent, a
//!   signed request that depends on no pending relay ([`ZooidClient::probe`]); only one verdict
//!   probe is in flight at a time, and the others wait for it. A probe that fails too confirms
//!   the outage: the breaker **opens**.
//! - While open, no relay sync is sent. A relay that wants one is **parked**: it gets one
//!   `fail_relay_sync` per outage that says `zooid is unavailable` (which never counts toward
//!   giving up) and waits. The prober thread probes zooid, one request at a time, on the
//!   backoff schedule (`base`, `2 base`, ... capped at `cap`, or the `Retry-After` zooid asked
//!   for, capped too).
//! - When a probe succeeds the breaker **closes**, and the dispatcher syncs every pending
//!   relay (paced by the pool and the rate limit).
//!
//! Hysteresis: opening takes three unavailable answers in a row, a relay's and two probes'
//! (the second on a fresh connection, in case the first went out on a kept-alive connection
//! zooid had closed); closing takes one probe that answers. A breaker that opens again
//! within `cap` of closing keeps its probe schedule where it was instead of starting over, so
//! a flapping zooid is probed less and less often: over any window of length `W`, the breaker
//! opens at most `log2(cap / base) + 1 + W / cap` times.
//!
//! The outage is written to the database (`zooid_outage`, one row per zooid) so that
//! `zooid-sync status` can tell the operator, and so that a restarted worker resumes probing
//! instead of sending every pending relay into a dead zooid.
//!
//! Each zooid has its own breaker and prober (see `Syncer::for_each_zooid`): one zooid down stops only
//! the relays that live there.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::metrics::ZooidMetrics;
use crate::quote;
use crate::retry::RetryPolicy;
use crate::store::{Command, Query};
use crate::time::now_unix;
use crate::zooid::{ProbeFailure, ZooidClient, ROBOT_REFUSED};

/// An outage in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// Unix time of the first confirmed failure.
    pub since: i64,
    /// The newest unavailability error.
    pub last_error: String,
    /// When the prober sends its next probe.
    pub next_probe: Instant,
}

/// The breaker's state and rules, without threads or I/O.
#[derive(Debug)]
pub struct Circuit {
    base: Duration,
    cap: Duration,
    outage: Option<Outage>,
    /// When zooid last answered something other than unavailability.
    last_answer: Option<Instant>,
    /// The number of the next probe of this outage (1-based), which sets its delay.
    level: u32,
    last_closed: Option<Instant>,
    /// Relays that got their `zooid is unavailable` record in this outage.
    told: HashSet<String>,
}

impl Circuit {
    /// A closed circuit probing on `policy`'s backoff.
    pub fn new(policy: &RetryPolicy) -> Circuit {
        Circuit {
            base: policy.base,
            cap: policy.cap,
            outage: None,
            last_answer: None,
            level: 1,
            last_closed: None,
            told: HashSet::new(),
        }
    }

    /// zooid answered (success, or any answer that is not unavailability).
    pub fn answered(&mut self, now: Instant) {
        self.last_answer = Some(self.last_answer.map_or(now, |t| t.max(now)));
    }

    /// Whether zooid answered anything after `t`.
    pub fn answered_since(&self, t: Instant) -> bool {
        self.last_answer.is_some_and(|a| a > t)
    }

    pub fn is_open(&self) -> bool {
        self.outage.is_some()
    }

    pub fn outage(&self) -> Option<&Outage> {
        self.outage.as_ref()
    }

    /// The delay before probe number `level`, or what zooid asked for; never above `cap`.
    fn delay(&self, retry_after: Option<Duration>) -> Duration {
        let factor = 1u32
            .checked_shl(self.level.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let backoff = self.base.saturating_mul(factor);
        backoff.max(retry_after.unwrap_or_default()).min(self.cap)
    }

    /// zooid is confirmed down. Answers whether this opened the circuit (it may be open
    /// already).
    pub fn open(
        &mut self,
        now: Instant,
        since: i64,
        error: String,
        retry_after: Option<Duration>,
    ) -> bool {
        if let Some(outage) = &mut self.outage {
            outage.last_error = error;
            return false;
        }
        let flapping = self
            .last_closed
            .is_some_and(|closed| now.saturating_duration_since(closed) < self.cap);
        if !flapping {
            self.level = 1;
        }
        let next_probe = now + self.delay(retry_after);
        self.outage = Some(Outage {
            since,
            last_error: error,
            next_probe,
        });
        true
    }

    /// A probe found zooid still down: the next one waits longer.
    pub fn probe_failed(&mut self, now: Instant, error: String, retry_after: Option<Duration>) {
        self.level = self.level.saturating_add(1);
        let delay = self.delay(retry_after);
        if let Some(outage) = &mut self.outage {
            outage.last_error = error;
            outage.next_probe = now + delay;
        }
    }

    /// A probe answered: the outage is over. Answers it, if there was one.
    pub fn close(&mut self, now: Instant) -> Option<Outage> {
        self.answered(now);
        let outage = self.outage.take()?;
        self.last_closed = Some(now);
        self.level = self.level.saturating_add(1);
        self.told.clear();
        Some(outage)
    }

    /// When the prober should probe next, while open.
    pub fn next_probe(&self) -> Option<Instant> {
        self.outage.as_ref().map(|o| o.next_probe)
    }

    /// Whether relay `id` still needs its one `zooid is unavailable` record in this outage.
    pub fn tell(&mut self, id: &str) -> bool {
        self.told.insert(id.to_string())
    }
}

/// What a verdict found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// zooid answers: the failure was the relay's own.
    ZooidUp,
    /// zooid is down; the breaker is open.
    ZooidDown,
    /// The worker is stopping: nobody probes, and no outage is opened on the way out.
    Stopping,
}

/// The breaker shared by the worker threads, the prober thread and the dispatcher.
pub struct Breaker {
    /// The zooid it guards (`default`: `ZOOID_API_URL`'s).
    name: String,
    circuit: Mutex<Circuit>,
    /// Wakes the prober when the circuit opens or the worker stops.
    changed: Condvar,
    /// Held while a verdict probe is in flight, so there is one at a time.
    verdict: Mutex<()>,
    stopping: AtomicBool,
    command: Command,
    metrics: Arc<ZooidMetrics>,
    /// Told the zooid's name once each time it answers again.
    back: Sender<String>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("circuit", &self.circuit)
            .finish()
    }
}

impl Breaker {
    /// A closed breaker for the zooid named `name`, probing on `policy`'s backoff, recording
    /// outages through `command`; `back` is told the name each time that zooid answers again.
    pub fn new(
        name: &str,
        policy: &RetryPolicy,
        command: Command,
        metrics: Arc<ZooidMetrics>,
        back: Sender<String>,
    ) -> Breaker {
        Breaker {
            name: name.to_string(),
            circuit: Mutex::new(Circuit::new(policy)),
            changed: Condvar::new(),
            verdict: Mutex::new(()),
            stopping: AtomicBool::new(false),
            command,
            metrics,
            back,
        }
    }

    /// How the logs name this zooid: `zooid` for the default one (the only one, mostly),
    /// `zooid <name>` for the others.
    fn zooid(&self) -> String {
        match self.name == crate::env::DEFAULT_ZOOID {
            true => "zooid".to_string(),
            false => format!("zooid {}", self.name),
        }
    }

    /// Tells the metrics whether this zooid is down and whether it refuses the robot.
    fn tell_metrics(&self, down: bool, refused: bool) {
        self.metrics.set_state(down, refused);
    }

    /// Opens the breaker if the database records an outage: a worker restarted during one
    /// probes zooid before it sends any relay. Only a worker with a prober calls this.
    pub fn resume_recorded_outage(&self, query: &Query) {
        match query.zooid_outage(&self.name) {
            Ok(Some((since, last_error))) => {
                log::warn!(
                    "{} has been unavailable since {} ({last_error}); probing it before \
                     any relay is sent",
                    self.zooid(),
                    crate::time::format_unix(since)
                );
                let refused = last_error.starts_with(ROBOT_REFUSED);
                let mut circuit = self.circuit.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                circuit.open(now, since, last_error, None);
                if let Some(outage) = &mut circuit.outage {
                    outage.next_probe = now;
                }
                self.tell_metrics(true, refused);
                self.changed.notify_all();
            }
            Ok(None) => {}
            Err(e) => log::error!("{e:#}"),
        }
    }

    /// zooid answered a request.
    pub fn answered(&self) {
        self.circuit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .answered(Instant::now());
    }

    /// Whether relay `id`, parked in this outage, still needs its one record saying so.
    pub fn tell(&self, id: &str) -> bool {
        self.circuit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tell(id)
    }

    /// The outage in progress, if any: since when, and the last error.
    pub fn outage(&self) -> Option<(i64, String)> {
        let circuit = self.circuit.lock().unwrap_or_else(PoisonError::into_inner);
        circuit.outage().map(|o| (o.since, o.last_error.clone()))
    }

    /// A request that started at `started` failed in a way that may be zooid's rather than
    /// the relay's: `failure` is an unavailability error, or zooid refusing the robot.
    /// Decides whether zooid is fit for relay syncs, probing it when nothing else tells.
    pub fn verdict(
        &self,
        client: &ZooidClient,
        started: Instant,
        failure: &ProbeFailure,
    ) -> Verdict {
        let _one_at_a_time = self.verdict.lock().unwrap_or_else(PoisonError::into_inner);
        if self.stopping.load(Ordering::Acquire) {
            return Verdict::Stopping;
        }
        {
            let circuit = self.circuit.lock().unwrap_or_else(PoisonError::into_inner);
            if circuit.is_open() {
                return Verdict::ZooidDown;
            }
            let unavailable = matches!(failure, ProbeFailure::Unavailable(_));
            if unavailable && circuit.answered_since(started) {
                return Verdict::ZooidUp;
            }
        }
        // A kept-alive connection that zooid (or a proxy) closed fails the first request sent
        // on it; a second probe goes out on a fresh one. Only two failed probes say "down".
        // A refusal of the robot is an answer: one probe confirms it.
        // A stop that comes meanwhile ends the verdict: no outage is opened on the way out.
        let stopping = || self.stopping.load(Ordering::Acquire);
        let probed = client.probe().or_else(|first| match first {
            ProbeFailure::Unavailable(_) if !stopping() => client.probe(),
            first => Err(first),
        });
        match probed {
            Ok(()) => {
                self.answered();
                Verdict::ZooidUp
            }
            Err(_) if stopping() => Verdict::Stopping,
            Err(probe_failure) => {
                log::debug!("verdict probe: {probe_failure}");
                // What the probe found is zooid's state now, whatever the relay's request met.
                self.open(&probe_failure);
                Verdict::ZooidDown
            }
        }
    }

    /// Opens the circuit (if it is not open yet), records the outage, tells the prober.
    fn open(&self, failure: &ProbeFailure) {
        let text = quote::remote(&failure.to_string(), quote::REMOTE_MAX);
        let since = now_unix();
        let opened = self
            .circuit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open(Instant::now(), since, text.clone(), failure.retry_after());
        if !opened {
            return;
        }
        self.metrics.breaker_opened();
        self.say_state(&text);
        if let Err(e) = self.command.record_zooid_outage(&self.name, since, &text) {
            log::error!("{e:#}");
        }
        self.changed.notify_all();
    }

    /// Sets the gauges and logs, once, what zooid's state `text` (an outage's last error)
    /// means and what to do about it.
    fn say_state(&self, text: &str) {
        let refused = text.starts_with(ROBOT_REFUSED);
        self.tell_metrics(true, refused);
        let zooid = self.zooid();
        let (its, relay_syncs) = match self.name == crate::env::DEFAULT_ZOOID {
            true => ("", "Relay syncs"),
            false => (" (this zooid's)", "Its relays' syncs"),
        };
        if refused {
            log::error!(
                "{zooid}: {text}. {relay_syncs} wait (none counts a try or gives up) and resume \
                 by themselves once {zooid} accepts the robot; it is probed one request at a \
                 time, on the backoff schedule"
            );
        } else {
            log::warn!(
                "{zooid} is unavailable ({text}); relay syncs{its} stop until it answers a \
                 probe (one request at a time, on the backoff schedule)"
            );
        }
    }

    /// Runs one probe and acts on its answer.
    fn probe(&self, client: &ZooidClient) {
        match client.probe() {
            Ok(()) => {
                let Some(outage) = self
                    .circuit
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .close(Instant::now())
                else {
                    return;
                };
                self.tell_metrics(false, false);
                let down_for = now_unix().saturating_sub(outage.since);
                let zooid = self.zooid();
                match outage.last_error.starts_with(ROBOT_REFUSED) {
                    true => log::info!(
                        "{zooid} accepts zooid-sync again after {down_for} s; syncing every \
                         waiting relay"
                    ),
                    false => log::info!(
                        "{zooid} answers again after {down_for} s unavailable; syncing every \
                         waiting relay"
                    ),
                }
                if let Err(e) = self.command.clear_zooid_outage(&self.name) {
                    log::error!("{e:#}");
                }
                let _ = self.back.send(self.name.clone());
            }
            Err(failure) => {
                let text = quote::remote(&failure.to_string(), quote::REMOTE_MAX);
                log::debug!(
                    "probe: {} still unfit for relay syncs: {text}",
                    self.zooid()
                );
                let (changed, kind_changed) = {
                    let mut circuit = self.circuit.lock().unwrap_or_else(PoisonError::into_inner);
                    let before = circuit.outage().map(|o| o.last_error.clone());
                    circuit.probe_failed(Instant::now(), text.clone(), failure.retry_after());
                    let since = circuit.outage().map(|o| o.since);
                    let kind_changed = before.as_deref().is_some_and(|b| {
                        b.starts_with(ROBOT_REFUSED) != text.starts_with(ROBOT_REFUSED)
                    });
                    let changed = before.as_deref() != Some(text.as_str());
                    (changed.then_some(since).flatten(), kind_changed)
                };
                if kind_changed {
                    self.say_state(&text);
                }
                if let Some(since) = changed {
                    if let Err(e) = self.command.record_zooid_outage(&self.name, since, &text) {
                        log::error!("{e:#}");
                    }
                }
            }
        }
    }

    /// Stops the prober.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _guard = self.circuit.lock().unwrap_or_else(PoisonError::into_inner);
        self.changed.notify_all();
    }
}

/// Starts the prober thread: while the circuit is open, it probes zooid when due.
pub fn spawn_prober(
    breaker: Arc<Breaker>,
    client: ZooidClient,
    watch: crate::metrics::ThreadWatch,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("zooid-sync-prober".into())
        .spawn(move || loop {
            let _watch = &watch;
            {
                let mut circuit = breaker
                    .circuit
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                loop {
                    if breaker.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    match circuit.next_probe() {
                        None => {
                            circuit = breaker
                                .changed
                                .wait(circuit)
                                .unwrap_or_else(PoisonError::into_inner)
                        }
                        Some(due) => {
                            let now = Instant::now();
                            if due <= now {
                                break;
                            }
                            circuit = breaker
                                .changed
                                .wait_timeout(circuit, due - now)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                        }
                    }
                }
            }
            breaker.probe(&client);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(800),
            max_attempts: 6,
            jitter: false,
        }
    }

    #[test]
    fn probes_back_off_to_the_cap_and_honour_retry_after() {
        let t0 = Instant::now();
        let mut c = Circuit::new(&policy());
        assert!(c.open(t0, 0, "down".into(), None));
        assert!(!c.open(t0, 0, "still".into(), None), "opened once");
        assert_eq!(c.next_probe(), Some(t0 + Duration::from_millis(100)));
        let mut delays = Vec::new();
        for _ in 0..5 {
            c.probe_failed(t0, "down".into(), None);
            delays.push(c.next_probe().unwrap() - t0);
        }
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 800, 800]);
        c.probe_failed(t0, "down".into(), Some(Duration::from_secs(60)));
        assert_eq!(
            c.next_probe().unwrap() - t0,
            Duration::from_millis(800),
            "capped"
        );
    }

    #[test]
    fn a_flapping_zooid_keeps_its_probe_schedule() {
        let t0 = Instant::now();
        let mut c = Circuit::new(&policy());
        c.open(t0, 0, "down".into(), None);
        assert!(c.close(t0).is_some());
        // Down again right away: the next probe waits longer than the first did.
        let t1 = t0 + Duration::from_millis(10);
        c.open(t1, 0, "down".into(), None);
        assert_eq!(c.next_probe().unwrap() - t1, Duration::from_millis(200));
        c.close(t1);
        // Down again long after: the schedule starts over.
        let t2 = t1 + Duration::from_secs(10);
        c.open(t2, 0, "down".into(), None);
        assert_eq!(c.next_probe().unwrap() - t2, Duration::from_millis(100));
    }

    #[test]
    fn each_relay_is_told_once_per_outage() {
        let t0 = Instant::now();
        let mut c = Circuit::new(&policy());
        c.open(t0, 0, "down".into(), None);
        assert!(c.tell("a"));
        assert!(!c.tell("a"));
        c.close(t0);
        c.open(t0 + Duration::from_secs(5), 0, "down".into(), None);
        assert!(c.tell("a"), "a new outage");
    }

    #[test]
    fn answers_after_a_request_started_tell_that_zooid_is_up() {
        let t0 = Instant::now();
        let mut c = Circuit::new(&policy());
        assert!(!c.answered_since(t0));
        c.answered(t0 + Duration::from_millis(1));
        assert!(c.answered_since(t0));
        assert!(!c.answered_since(t0 + Duration::from_millis(2)));
    }
}
