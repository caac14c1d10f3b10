//! The worker pool: a few threads that run syncs, never two of the same relay at once.
//!
//! A sync runs in two stages, each on its own thread, so that preparing one relay overlaps
//! another's request: the *preparer* takes relay ids in the order [`Lanes`] says, reads each
//! relay, builds its body and signs its request ([`Syncer::prepare`]); a *worker* sends a
//! prepared request, waits for zooid and hands the outcome to the writer thread
//! ([`Syncer::send_then`]). Prepared syncs travel on a [`Queue`]; at most two per worker
//! wait, so a signature is fresh when it is sent.
//!
//! Which relay starts next, fresh work ahead of a backlog and a backlog at the [`Pacer`]'s
//! pace, is decided by the pure state machine in [`super::lanes`]; this module runs it under
//! one lock with one condition variable.
//!
//! **Liveness.** The preparer sleeps only on that condition variable, and only for what
//! [`Lanes::next`] answers: nothing waits, a write must end first, or a backlog's turn comes
//! at an instant (a timed wait, at most [`crate::pace::DEBT_SPACINGS`] spacings away).
//! Whatever may let it proceed wakes it: a relay queued, a write ending (dropping its
//! [`Admission`]), a stop. The pool reports how many relays wait and when a sync last started
//! or ended ([`ZooidMetrics::work_waiting`], [`ZooidMetrics::work_moved`]), so that work that does not
//! move turns `/healthz` to 503 instead of hiding behind live threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

pub use super::lanes::FRESH_AT_ONCE;
use super::lanes::{Lane, Lanes, Next};
use super::queue::{CloseOnDrop, Queue};
use super::sampler::{self, Sampler};
use super::sync::{Prepared, SyncOutcome, Syncer};
use super::timer::Retries;
use crate::metrics::ZooidMetrics;
use crate::pace::Pacer;

/// How many relays waiting make a catch-up worth a line in the log.
const CATCH_UP: usize = 20;

/// After how many relays of a catch-up its pace is recorded again, learned from their writes.
const PACE_LEARNED: usize = 4;

/// What is recorded of a catch-up in progress (`worker_settings`): since when (unix
/// seconds), how many relays it started with, and the spacing of its writes (ms).
pub const CATCH_UP_STATE: [&str; 3] = ["catch_up_since", "catch_up_relays", "catch_up_spacing_ms"];

/// The names [`CATCH_UP_STATE`] is recorded under for the zooid named `zooid`: as they are
/// for the default zooid, `catch_up_since:eu` and so on for another.
pub fn catch_up_keys(zooid: &str) -> [String; 3] {
    CATCH_UP_STATE.map(|key| match zooid == crate::env::DEFAULT_ZOOID {
        true => key.to_string(),
        false => format!("{key}:{zooid}"),
    })
}

/// What the pools of all zooids share: which pool runs each relay (a relay runs in one at a
/// time: a relay that moves, or is deleted while its create is in flight, waits for the sync
/// it has elsewhere), and the channel on which a pool hands the dispatcher a relay that is
/// another pool's, with the manual requests its sync is to answer.
#[derive(Debug, Clone)]
pub struct Handoff {
    claims: Arc<Mutex<Claims>>,
    moved: Sender<(String, Vec<i64>)>,
}

/// The relays running in some pool, by pool (its zooid's name), and the manual requests of
/// those another pool waits to run.
#[derive(Debug, Default)]
struct Claims {
    running: std::collections::HashMap<String, String>,
    waiting: std::collections::HashMap<String, Vec<i64>>,
}

impl Handoff {
    /// A handoff whose moved relays go to `moved`.
    pub fn new(moved: Sender<(String, Vec<i64>)>) -> Handoff {
        Handoff {
            claims: Arc::default(),
            moved,
        }
    }

    fn claims(&self) -> MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `id` for the pool of `zooid`. When another pool runs it, answers false and
    /// keeps `answering` for when that one is done.
    fn claim(&self, id: &str, zooid: &str, answering: &[i64]) -> bool {
        let mut claims = self.claims();
        match claims.running.get(id) {
            Some(by) if by != zooid => {
                claims
                    .waiting
                    .entry(id.to_string())
                    .or_default()
                    .extend_from_slice(answering);
                false
            }
            _ => {
                claims.running.insert(id.to_string(), zooid.to_string());
                true
            }
        }
    }

    /// The pool of `zooid` is done with `id`: a pool that waited for it is handed it, through
    /// the dispatcher. Nothing when that pool does not run it.
    fn release(&self, id: &str, zooid: &str) {
        let waited = {
            let mut claims = self.claims();
            if claims.running.get(id).is_none_or(|by| by != zooid) {
                return;
            }
            claims.running.remove(id);
            claims.waiting.remove(id)
        };
        if let Some(answering) = waited {
            self.hand_on(id.to_string(), answering);
        }
    }

    /// Hands `id` to the dispatcher, for the pool of the zooid it lives at.
    fn hand_on(&self, id: String, answering: Vec<i64>) {
        let _ = self.moved.send((id, answering));
    }

    /// Gives back the memory a burst left in the claims.
    fn shrink(&self) {
        let mut claims = self.claims();
        claims.running.shrink_to_fit();
        claims.waiting.shrink_to_fit();
    }
}

/// The running pool.
pub struct Pool {
    shared: Arc<PoolShared>,
    threads: Vec<JoinHandle<()>>,
    /// Asks zooid's relay users while a backlog is paced (when the pace asks them).
    sampler: Option<Sampler>,
}

struct PoolShared {
    /// The relays waiting and running, and the lanes; closed when the pool stops.
    lanes: Mutex<Lanes>,
    /// Signalled whenever the preparer may proceed: a relay queued, a write over, a stop.
    changed: Condvar,
    /// Whether the preparer sleeps on `changed` (set and cleared under the lanes' lock): a
    /// wake-up is a system call, spent only when someone waits for it.
    preparer_waits: AtomicBool,
    /// This pool's zooid's series: its relays waiting, when its work last moved, its pace.
    zooid_metrics: Arc<ZooidMetrics>,
    /// The names its catch-ups are recorded under, for `zooid-sync status` ([`catch_up_keys`]).
    catch_up_keys: [String; 3],
    /// The name of its zooid.
    zooid: String,
    /// What it shares with the other zooids' pools.
    handoff: Handoff,
    pacer: Arc<Pacer>,
    /// While a catch-up runs: when it started, how many relays it had, how many are done.
    catch_up: Mutex<Option<(std::time::Instant, usize, usize)>>,
    /// Where a catch-up in progress is recorded, for `zooid-sync status`.
    command: crate::store::Command,
    /// Prepared syncs for the workers; closed by the preparer when it ends.
    ready: Queue<Job>,
    stopping: AtomicBool,
    /// When the pool last became idle, if it has done work since memory was last given back.
    idle_since: Mutex<Option<std::time::Instant>>,
}

impl PoolShared {
    /// Stops the pool: nothing more is queued, what waits is forgotten (it is pending in the
    /// database), and the preparer is woken to end.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.lock().close();
        self.changed.notify_all();
    }

    /// Wakes the preparer if it sleeps; call with the lanes' lock held.
    fn wake_preparer(&self) {
        if self.preparer_waits.load(Ordering::Acquire) {
            self.changed.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the lanes with `change`; when it queued a relay, wakes the preparer. Says how
    /// many relays wait, for the liveness check.
    fn update(&self, change: impl FnOnce(&mut Lanes) -> bool) {
        let mut lanes = self.lock();
        if change(&mut lanes) {
            self.wake_preparer();
        }
        self.zooid_metrics.work_waiting(lanes.queued());
    }

    /// Forgets `id`, which was to run here and will not (the pool stops, or another pool
    /// runs it): it is pending in the database.
    fn abandon(&self, id: &str) {
        self.lock().abandon(id);
        self.handoff.release(id, &self.zooid);
    }

    /// The outcome of `id`'s sync is recorded: only now may its next sync start. Queues it
    /// again if it changed meanwhile.
    fn finished(&self, id: &str) {
        let mut lanes = self.lock();
        if lanes.finish(id) {
            self.wake_preparer();
        }
        self.handoff.release(id, &self.zooid);
        self.zooid_metrics.work_waiting(lanes.queued());
        self.zooid_metrics.work_moved();
        let idle = lanes.is_empty();
        drop(lanes);
        let (pace_learned, ended) = {
            let mut catch_up = self.catch_up.lock().unwrap_or_else(PoisonError::into_inner);
            let mut pace_learned = false;
            if let Some((_, _, done)) = catch_up.as_mut() {
                *done += 1;
                pace_learned = *done == PACE_LEARNED;
            }
            (pace_learned, if idle { catch_up.take() } else { None })
        };
        // The database is written outside the lock: the writer's callbacks take it.
        if pace_learned {
            // The pace is known by now: what `status` estimates the rest by.
            let spacing = self.pacer.state().spacing.as_millis().to_string();
            self.record(&[(&self.catch_up_keys[2], Some(spacing))]);
        }
        if idle {
            if let Some((started, _, done)) = ended {
                let took = started.elapsed();
                log::info!(
                    "catch-up done: {} in {} ({:.1} a second)",
                    crate::words::plural(done as u64, "relay", "relays"),
                    crate::words::show_duration(Duration::from_secs(took.as_secs().max(1))),
                    done as f64 / took.as_secs_f64().max(0.001)
                );
                self.record_catch_up(None);
            }
            *self
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(std::time::Instant::now());
        }
    }

    /// Logs, once, that a catch-up starts, when `waiting` relays make one: how many, the pace
    /// and about how long it will take.
    fn catching_up(&self, waiting: usize) {
        {
            let mut catch_up = self.catch_up.lock().unwrap_or_else(PoisonError::into_inner);
            if catch_up.is_some() || waiting < CATCH_UP {
                return;
            }
            *catch_up = Some((std::time::Instant::now(), waiting, 0));
        }
        let crate::pace::PaceState {
            limit,
            spacing,
            write_latency: latency,
            ..
        } = self.pacer.state();
        let pace = match (spacing.is_zero(), latency) {
            (false, Some(latency)) => format!(
                "writes paced to zooid's spare time: one every {}, {limit} at most in \
                 flight, zooid answering in {} (about {} left)",
                crate::words::show_duration(round_ms(spacing)),
                crate::words::show_duration(round_ms(latency)),
                crate::words::show_duration(Duration::from_secs(
                    (spacing.as_secs_f64() * waiting as f64).ceil() as u64
                ))
            ),
            _ => "the pace is learned from zooid's first answers".to_string(),
        };
        log::info!(
            "catch-up: {} to sync; {pace}",
            crate::words::plural(waiting as u64, "relay", "relays")
        );
        self.record_catch_up(Some((waiting, spacing)));
    }

    /// Records a catch-up that starts with `waiting` relays at one write per `spacing`, or
    /// forgets it (`None`), for `zooid-sync status`. A failure to record it is logged only.
    fn record_catch_up(&self, started: Option<(usize, Duration)>) {
        let values = match started {
            Some((waiting, spacing)) => [
                Some(crate::time::now_unix().to_string()),
                Some(waiting.to_string()),
                Some(spacing.as_millis().to_string()),
            ],
            None => [None, None, None],
        };
        let state: Vec<(&str, Option<String>)> = self
            .catch_up_keys
            .iter()
            .map(String::as_str)
            .zip(values)
            .collect();
        self.record(&state);
    }

    /// Records the catch-up's state; a failure to is logged only.
    fn record(&self, state: &[(&str, Option<String>)]) {
        if let Err(e) = self.command.record_worker_state(state) {
            log::warn!("{e:#}");
        }
    }
}

impl Pool {
    /// Starts `workers` worker threads and the preparer, sharing `syncer`. A worker hands
    /// each outcome to the writer thread and takes its next prepared sync; once the outcome
    /// is recorded, a success cancels the relay's pending retry through `retries`, an outcome
    /// that could not be recorded is retried after `retry_later`, and the relay may be synced
    /// again. `served` are hosts of relays zooid serves now, for the sampler's first check.
    /// The pool syncs relays to the syncer's zooid; a relay found to live at another, or
    /// running in another's pool, goes through `handoff` to the dispatcher.
    pub fn start(
        workers: usize,
        syncer: Syncer,
        retries: Arc<Retries>,
        retry_later: std::time::Duration,
        served: Vec<String>,
        handoff: Handoff,
    ) -> std::io::Result<Pool> {
        let workers = workers.max(1);
        let pacer = syncer.client().pacer().clone();
        let zooid = syncer.zooid().to_string();
        // The default zooid's threads keep their plain names; another's carry its name.
        let named = |kind: &str| match zooid == crate::env::DEFAULT_ZOOID {
            true => format!("zooid-sync-{kind}"),
            false => format!("zooid-sync-{kind}-{zooid}"),
        };
        let shared = Arc::new(PoolShared {
            lanes: Mutex::new(Lanes::default()),
            changed: Condvar::new(),
            preparer_waits: AtomicBool::new(false),
            zooid_metrics: syncer.own_zooid().metrics.clone(),
            catch_up_keys: catch_up_keys(&zooid),
            zooid: zooid.clone(),
            handoff,
            pacer,
            catch_up: Mutex::new(None),
            command: syncer.command().clone(),
            // Room for two prepared syncs per worker: a worker finds its next request ready,
            // the preparer fills the queue a few at a time (it is woken at half), and a
            // signature is still fresh when it is sent.
            ready: Queue::bounded(2 * workers),
            stopping: AtomicBool::new(false),
            idle_since: Mutex::new(None),
        });
        let sampler = match shared.pacer.asks_users() {
            true => Some(Sampler::start(
                syncer.client().clone(),
                syncer.breaker().clone(),
                syncer.metrics().clone(),
                syncer.own_zooid().metrics.clone(),
                served,
            )?),
            false => None,
        };
        let syncer = Arc::new(syncer);
        let spawned = (0..workers)
            .map(|n| {
                let (shared, syncer, retries) = (shared.clone(), syncer.clone(), retries.clone());
                let name = format!("{}-{n}", named("worker"));
                let watch = syncer.metrics().watch_thread(&name);
                std::thread::Builder::new().name(name).spawn(move || {
                    let _watch = watch;
                    work(&shared, &syncer, &retries, retry_later)
                })
            })
            .chain(std::iter::once_with(|| {
                let (shared, syncer) = (shared.clone(), syncer.clone());
                let name = named("preparer");
                let watch = syncer.metrics().watch_thread(&name);
                std::thread::Builder::new().name(name).spawn(move || {
                    let _watch = watch;
                    prepare(&shared, &syncer)
                })
            }))
            .collect::<std::io::Result<Vec<_>>>();
        let threads = match spawned {
            Ok(threads) => threads,
            Err(e) => {
                // The threads that did start end once nothing can reach them.
                shared.stop();
                shared.ready.close();
                if let Some(sampler) = sampler {
                    sampler.stop();
                }
                return Err(e);
            }
        };
        Ok(Pool {
            shared,
            threads,
            sampler,
        })
    }

    /// Asks for a sync of relay `id` (see [`Lanes::request`]) as part of a backlog: paced.
    pub fn submit(&self, id: &str) {
        self.submit_as(id, false);
    }

    /// Asks for a sync of relay `id` that someone waits for (fresh work, see
    /// [`FRESH_AT_ONCE`]): it goes first and at once, unless the fresh lane is full.
    pub fn submit_fresh(&self, id: &str) {
        self.submit_as(id, true);
    }

    fn submit_as(&self, id: &str, fresh: bool) {
        self.shared.update(|lanes| lanes.request(id, fresh));
    }

    /// Whether the pool has been idle for `quiet` since it last did work, and has not said so
    /// yet: true once after each burst, the moment to give memory back.
    pub fn settled(&self, quiet: std::time::Duration) -> bool {
        if !self.shared.lock().is_empty() {
            return false;
        }
        let mut idle_since = self
            .shared
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *idle_since {
            Some(since) if since.elapsed() >= quiet => {
                *idle_since = None;
                true
            }
            _ => false,
        }
    }

    /// Whether no relay waits or runs in the pool.
    pub fn is_idle(&self) -> bool {
        self.shared.lock().is_empty()
    }

    /// Gives back the memory a burst left in the pool's bookkeeping and queues.
    pub fn release_memory(&self) {
        self.shared.lock().shrink();
        self.shared.ready.shrink();
        self.shared.handoff.shrink();
    }

    /// Asks for a sync of relay `id` that answers manual request `request` (see
    /// [`Lanes::request_answer`]); `fresh` as for [`submit_fresh`](Self::submit_fresh).
    pub fn submit_request(&self, id: &str, request: i64, fresh: bool) {
        self.shared
            .update(|lanes| lanes.request_answer(id, request, fresh));
    }

    /// Stops taking jobs, lets running syncs finish, and waits for the threads. Queued jobs
    /// are dropped: they are still pending in the database for the next start. Outcomes
    /// handed to the writer are recorded when the writer stops.
    pub fn stop(mut self) {
        self.shared.stop();
        if let Some(sampler) = self.sampler.take() {
            sampler.stop();
        }
        let stopped_during_catch_up = self
            .shared
            .catch_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some();
        if stopped_during_catch_up {
            self.shared.record_catch_up(None);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared.zooid_metrics.work_waiting(0);
    }
}

/// A relay's sync on its way from the preparer to a worker.
struct Job {
    id: String,
    /// The manual sync requests this sync answers.
    answering: Vec<i64>,
    prepared: Prepared,
    /// The pacer's leave to write; dropped once zooid answered.
    admission: Admission,
}

/// A write the pace admitted ([`Next::Start`]); dropping it says the write is over, and wakes
/// the preparer (a backlog may wait for it).
struct Admission {
    shared: Arc<PoolShared>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let pace = self.shared.pacer.end_write();
        self.shared.zooid_metrics.set_pace(&pace);
        let _lanes = self.shared.lock();
        self.shared.wake_preparer();
    }
}

/// The preparer thread's loop: asks [`Lanes::next`] what to do, sleeps until it may proceed
/// when it must wait, and prepares each relay that starts (read, body, signature) for the
/// workers.
fn prepare(shared: &Arc<PoolShared>, syncer: &Syncer) {
    // However this thread ends, the workers learn that no more syncs come.
    let _closing = CloseOnDrop(&shared.ready);
    let stopping = || shared.stopping.load(Ordering::Acquire);
    loop {
        let (id, lane, answering, waiting) = {
            let mut lanes = shared.lock();
            loop {
                if lanes.is_closed() {
                    return;
                }
                let now = Instant::now();
                let next = lanes.next(&mut shared.pacer.pace(), now);
                shared.zooid_metrics.work_waiting(lanes.queued());
                if matches!(
                    next,
                    Next::WaitUntil(_)
                        | Next::WaitForWrite
                        | Next::Start {
                            lane: Lane::Backlog,
                            ..
                        }
                ) {
                    shared.pacer.backlog_asked(); // its users are asked from now on
                }
                let wait = match next {
                    Next::Start {
                        id,
                        lane,
                        answering,
                    } => break (id, lane, answering, lanes.len()),
                    Next::Idle | Next::WaitForWrite => None,
                    Next::WaitUntil(at) => Some(at.saturating_duration_since(now)),
                };
                shared.preparer_waits.store(true, Ordering::Release);
                lanes = match wait {
                    None => shared
                        .changed
                        .wait(lanes)
                        .unwrap_or_else(PoisonError::into_inner),
                    Some(timeout) => {
                        shared
                            .changed
                            .wait_timeout(lanes, timeout)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                };
                shared.preparer_waits.store(false, Ordering::Release);
            }
        };
        let admission = Admission {
            shared: shared.clone(),
        };
        shared.zooid_metrics.work_moved();
        #[cfg(feature = "fixture")]
        syncer.injected.maybe_stall(&id, &stopping);
        if lane == Lane::Backlog {
            shared.catching_up(waiting);
            if shared.pacer.wants_floor() && syncer.breaker().outage().is_none() {
                // The cheapest request zooid answers: what any request costs, network
                // included, and so how much of a write's time is zooid's work.
                let _ = syncer.client().probe();
            }
            if shared.pacer.wants_idle() && syncer.breaker().outage().is_none() {
                // What a relay user waits while zooid-sync sends nothing, before it does.
                sampler::measure_idle(syncer.client());
            }
        }
        if stopping() {
            shared.abandon(&id);
            continue;
        }
        if !shared.handoff.claim(&id, &shared.zooid, &answering) {
            // Another zooid's pool runs it (it moved, or was deleted while its create was in
            // flight): that pool hands it back once done, with these requests.
            log::debug!("relay {id}: its sync elsewhere runs first");
            shared.abandon(&id);
            continue;
        }
        let prepared = syncer.prepare(&id);
        let job = Job {
            id,
            answering,
            prepared,
            admission,
        };
        // Fresh work goes ahead of the backlog's writes prepared before it.
        let pushed = match lane {
            Lane::Fresh => shared.ready.push_first(job),
            Lane::Backlog => shared.ready.push(job),
        };
        if let Err(unsent) = pushed {
            // Nothing takes prepared syncs any more: forget the relay.
            shared.abandon(&unsent.id);
            break;
        }
    }
}

/// A worker's loop: sends prepared syncs, hands each outcome to the writer, and once it is
/// recorded answers manual requests, settles the relay's retry and lets its next sync start.
fn work(
    shared: &Arc<PoolShared>,
    syncer: &Arc<Syncer>,
    retries: &Arc<Retries>,
    retry_later: std::time::Duration,
) {
    while let Some(job) = shared.ready.pop() {
        if shared.stopping.load(Ordering::Acquire) {
            shared.abandon(&job.id);
            continue;
        }
        let Job {
            id: relay,
            answering,
            prepared,
            admission,
        } = job;
        let (shared, me, retries) = (shared.clone(), syncer.clone(), retries.clone());
        syncer.send_then(prepared, move |outcome| {
            if let SyncOutcome::LivesElsewhere(_) = outcome {
                // Only once it is done here: its sync at its own zooid must not run beside
                // this one. Its requests are answered there.
                shared.finished(&relay);
                shared.handoff.hand_on(relay, answering);
                return;
            }
            for request in answering {
                me.answer(request, &outcome);
            }
            match &outcome {
                SyncOutcome::Synced { .. } => retries.cancel(&relay),
                SyncOutcome::NotRecorded(_) | SyncOutcome::Slow => {
                    retries.schedule(&relay, retry_later)
                }
                SyncOutcome::Failed(_)
                | SyncOutcome::Parked
                | SyncOutcome::Gone
                | SyncOutcome::Interrupted => {}
                SyncOutcome::LivesElsewhere(_) => {}
            }
            shared.finished(&relay);
        });
        drop(admission); // zooid has answered: the next write may go
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_runs_in_one_pool_and_the_one_that_waited_gets_it_with_its_requests() {
        let (moved, handed) = crossbeam_channel::unbounded();
        let handoff = Handoff::new(moved);
        assert!(handoff.claim("a", "eu", &[]));
        assert!(
            handoff.claim("a", "eu", &[]),
            "its own pool may claim it again"
        );
        assert!(handoff.claim("b", "default", &[]), "another relay is free");
        assert!(!handoff.claim("a", "default", &[7]), "eu runs it");
        assert!(!handoff.claim("a", "us", &[8, 9]));
        handoff.release("a", "default");
        assert!(handed.try_recv().is_err(), "only its runner releases it");
        assert!(!handoff.claim("a", "default", &[]));
        handoff.release("a", "eu");
        assert_eq!(
            handed.try_recv().ok(),
            Some(("a".to_string(), vec![7, 8, 9])),
            "what waited is handed on, with every request"
        );
        assert!(handed.try_recv().is_err(), "once");
        assert!(
            handoff.claim("a", "default", &[]),
            "free once its runner is done"
        );
        assert!(!handoff.claim("a", "eu", &[3]));
        handoff.release("a", "default");
        assert_eq!(handed.try_recv().ok(), Some(("a".to_string(), vec![3])));
        handoff.release("b", "default");
        assert!(handed.try_recv().is_err(), "nobody waited for b");
    }
}
