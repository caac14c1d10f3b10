//! The worker pool: a few threads that run syncs, never two of the same relay at once.
//!
//! A sync runs in two stages, each on its own thread, so that preparing one relay overlaps
//! another's request: the *preparer* takes relay ids in the order asked, reads each relay,
//! builds its body and signs its request ([`Syncer::prepare`]); a *worker* sends a prepared
//! request, waits for zooid and hands the outcome to the writer thread
//! ([`Syncer::send_then`]). Relay ids and prepared syncs travel on [`Queue`]s; at most two
//! prepared syncs per worker wait, so a signature is fresh when it is sent.
//!
//! The preparer admits each sync through the [`Pacer`] first: a backlog's writes are paced by
//! what they cost zooid (see [`super::pace`]), while an *urgent* sync (a fresh change, a
//! manual sync of a few relays) goes to the front of the queue and is admitted at once. Only
//! the first [`URGENT_AT_ONCE`] waiting syncs count as urgent: a host that imports a thousand
//! relays makes a backlog, paced like any other.
//!
//! [`InFlight`] is the per-relay bookkeeping that keeps the order right: a relay asked for while
//! its id is still queued needs nothing more (its sync reads fresh data when it is prepared); a
//! relay asked for once its sync started (from the read on) is marked dirty and synced once
//! more, from fresh data, when that sync's outcome is recorded. So a burst of updates to one
//! relay costs at most two requests, and an older body can never overwrite a newer one at
//! zooid.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::pace::{Admission, Pacer};
use super::queue::{CloseOnDrop, Queue};
use super::sync::{Prepared, SyncOutcome, Syncer};
use super::timer::Retries;

/// How many syncs may wait as urgent at once; more fresh changes than this are a backlog.
pub const URGENT_AT_ONCE: usize = 2;

/// How many relays waiting make a catch-up worth a line in the log.
const CATCH_UP: usize = 20;

/// After how many relays of a catch-up its pace is recorded again, learned from their writes.
const PACE_LEARNED: usize = 4;

/// What is recorded of a catch-up in progress (`worker_settings`): since when (unix
/// seconds), how many relays it started with, and the spacing of its writes (ms).
pub const CATCH_UP_STATE: [&str; 3] = ["catch_up_since", "catch_up_relays", "catch_up_spacing_ms"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    Running { dirty: bool },
}

/// Which relays are queued or running, which changed while running, and which manual sync
/// requests wait for each relay's next sync.
#[derive(Debug, Default)]
pub struct InFlight {
    relays: HashMap<String, State>,
    requests: HashMap<String, Vec<i64>>,
}

impl InFlight {
    /// A sync of `id` is wanted. Answers whether a job must be queued for it.
    pub fn request(&mut self, id: &str) -> bool {
        match self.relays.get_mut(id) {
            None => {
                self.relays.insert(id.to_string(), State::Queued);
                true
            }
            Some(State::Queued) => false,
            Some(State::Running { dirty }) => {
                *dirty = true;
                false
            }
        }
    }

    /// An urgent sync of `id` is wanted. Answers whether a job must be queued for it: also
    /// when one is queued already, in a backlog; the preparer then skips the copy left
    /// behind ([`is_queued`](Self::is_queued)).
    pub fn request_urgent(&mut self, id: &str) -> bool {
        let queued = self.relays.get(id) == Some(&State::Queued);
        self.request(id) || queued
    }

    /// Whether `id` waits for its sync to start: false for a job left behind by one that
    /// went ahead of it.
    pub fn is_queued(&self, id: &str) -> bool {
        self.relays.get(id) == Some(&State::Queued)
    }

    /// Manual sync request `request` wants a sync of `id` that starts after now. Answers
    /// whether a job must be queued for it.
    pub fn request_answer(&mut self, id: &str, request: i64) -> bool {
        self.requests
            .entry(id.to_string())
            .or_default()
            .push(request);
        self.request(id)
    }

    /// The requests that the sync of `id` starting now answers.
    pub fn take_requests(&mut self, id: &str) -> Vec<i64> {
        self.requests.remove(id).unwrap_or_default()
    }

    /// The preparer starts syncing `id`: from its read on, a change marks it dirty.
    pub fn start(&mut self, id: &str) {
        let running = State::Running { dirty: false };
        match self.relays.get_mut(id) {
            Some(state) => *state = running,
            None => {
                self.relays.insert(id.to_string(), running);
            }
        }
    }

    /// The outcome of `id`'s sync is recorded. Answers whether it must be synced once more
    /// (it changed meanwhile); it is then queued again.
    pub fn finish(&mut self, id: &str) -> bool {
        match self.relays.get_mut(id) {
            Some(State::Running { dirty: true }) => {
                self.relays.insert(id.to_string(), State::Queued);
                true
            }
            _ => {
                self.relays.remove(id);
                false
            }
        }
    }

    /// Gives back the room a burst left behind: the maps keep their largest size otherwise
    /// (~0.5 MB after 10 000 relays).
    fn shrink(&mut self) {
        self.relays.shrink_to_fit();
        self.requests.shrink_to_fit();
    }

    /// Forgets `id` without syncing it (at shutdown). Its requests stay unanswered in the
    /// database, for the next worker.
    pub fn abandon(&mut self, id: &str) {
        self.relays.remove(id);
        self.requests.remove(id);
    }

    /// How many relays are queued or running.
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }
}

/// The running pool.
pub struct Pool {
    shared: Arc<PoolShared>,
    threads: Vec<JoinHandle<()>>,
}

struct PoolShared {
    in_flight: Mutex<InFlight>,
    /// Relay ids for the preparer, with whether each is urgent (urgent ones at the front);
    /// closed when the pool stops.
    jobs: Queue<(String, bool)>,
    /// Urgent syncs in `jobs`.
    urgent_waiting: std::sync::atomic::AtomicUsize,
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
    /// Queues a job for `id` (unless the pool is stopping): at the front when it is urgent
    /// and few urgent ones wait, else at the back.
    fn queue(&self, id: &str, urgent: bool) {
        let urgent = urgent
            && self
                .urgent_waiting
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < URGENT_AT_ONCE).then_some(n + 1)
                })
                .is_ok();
        if urgent {
            if self.jobs.push_front((id.to_string(), true)).is_err() {
                self.urgent_waiting.fetch_sub(1, Ordering::AcqRel);
            }
            self.pacer.nudge(); // a backlog waiting for its turn lets it go first
        } else {
            let _ = self.jobs.push((id.to_string(), false));
        }
    }

    /// The outcome of `id`'s sync is recorded: only now may its next sync start. Queues it
    /// again if it changed meanwhile.
    fn finished(&self, id: &str) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if in_flight.finish(id) {
            if self.stopping.load(Ordering::Acquire) {
                in_flight.abandon(id);
            } else {
                self.queue(id, false);
            }
        }
        let idle = in_flight.relays.is_empty();
        drop(in_flight);
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
            let spacing = self.pacer.state().1.as_millis().to_string();
            self.record(&[(CATCH_UP_STATE[2], Some(spacing))]);
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
        let (limit, spacing, latency) = self.pacer.state();
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
                Some(crate::store::now_unix().to_string()),
                Some(waiting.to_string()),
                Some(spacing.as_millis().to_string()),
            ],
            None => [None, None, None],
        };
        let state: Vec<(&str, Option<String>)> = CATCH_UP_STATE.into_iter().zip(values).collect();
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
    /// again.
    pub fn start(
        workers: usize,
        syncer: Syncer,
        retries: Arc<Retries>,
        retry_later: std::time::Duration,
    ) -> std::io::Result<Pool> {
        let workers = workers.max(1);
        let pacer = syncer.client().pacer().clone();
        let shared = Arc::new(PoolShared {
            in_flight: Mutex::new(InFlight::default()),
            jobs: Queue::unbounded(),
            urgent_waiting: Default::default(),
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
        let syncer = Arc::new(syncer);
        let spawned = (0..workers)
            .map(|n| {
                let (shared, syncer, retries) = (shared.clone(), syncer.clone(), retries.clone());
                let name = format!("zooid-sync-worker-{n}");
                let watch = syncer.metrics().watch_thread(&name);
                std::thread::Builder::new().name(name).spawn(move || {
                    let _watch = watch;
                    work(&shared, &syncer, &retries, retry_later)
                })
            })
            .chain(std::iter::once_with(|| {
                let (shared, syncer) = (shared.clone(), syncer.clone());
                let watch = syncer.metrics().watch_thread("zooid-sync-preparer");
                std::thread::Builder::new()
                    .name("zooid-sync-preparer".into())
                    .spawn(move || {
                        let _watch = watch;
                        prepare(&shared, &syncer)
                    })
            }))
            .collect::<std::io::Result<Vec<_>>>();
        let threads = match spawned {
            Ok(threads) => threads,
            Err(e) => {
                // The threads that did start end once nothing can reach them.
                shared.jobs.close();
                shared.ready.close();
                return Err(e);
            }
        };
        Ok(Pool { shared, threads })
    }

    /// Asks for a sync of relay `id` (see [`InFlight::request`]) as part of a backlog: paced.
    pub fn submit(&self, id: &str) {
        self.submit_as(id, false);
    }

    /// Asks for a sync of relay `id` that someone waits for (a fresh change): it goes first
    /// and at once, unless [`URGENT_AT_ONCE`] urgent ones wait already.
    pub fn submit_urgent(&self, id: &str) {
        self.submit_as(id, true);
    }

    fn submit_as(&self, id: &str, urgent: bool) {
        let mut in_flight = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let queue = match urgent {
            true => in_flight.request_urgent(id),
            false => in_flight.request(id),
        };
        drop(in_flight);
        if queue {
            self.shared.queue(id, urgent);
        }
    }

    /// Whether the pool has been idle for `quiet` since it last did work, and has not said so
    /// yet: true once after each burst, the moment to give memory back.
    pub fn settled(&self, quiet: std::time::Duration) -> bool {
        if !self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .relays
            .is_empty()
        {
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

    /// Gives back the memory a burst left in the pool's bookkeeping and queues.
    pub fn release_memory(&self) {
        self.shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shrink();
        self.shared.jobs.shrink();
        self.shared.ready.shrink();
    }

    /// Asks for a sync of relay `id` that answers manual request `request` (see
    /// [`InFlight::request_answer`]); `urgent` as for [`submit_urgent`](Self::submit_urgent).
    pub fn submit_request(&self, id: &str, request: i64, urgent: bool) {
        let queue = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .request_answer(id, request);
        if queue {
            self.shared.queue(id, urgent);
        }
    }

    /// Stops taking jobs, lets running syncs finish, and waits for the threads. Queued jobs
    /// are dropped: they are still pending in the database for the next start. Outcomes
    /// handed to the writer are recorded when the writer stops.
    pub fn stop(mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.jobs.close();
        self.shared.pacer.nudge();
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

/// The preparer thread's loop: takes relay ids, urgent ones first; admits each through the
/// pacer (a backlog waits for its turn, and lets urgent ones go first meanwhile); marks it
/// running and prepares its sync (read, body, signature) for the workers.
fn prepare(shared: &PoolShared, syncer: &Syncer) {
    // However this thread ends, the workers learn that no more syncs come.
    let _closing = CloseOnDrop(&shared.ready);
    let stopping = || shared.stopping.load(Ordering::Acquire);
    let lock = || {
        shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    };
    // A backlog sync that gave its turn to an urgent one.
    let mut held: Option<String> = None;
    loop {
        let (id, urgent) = match shared.jobs.pop_if(|(_, urgent)| *urgent) {
            Some(job) => job,
            None => match held.take() {
                Some(id) => (id, false),
                None => match shared.jobs.pop() {
                    Some(job) => job,
                    None => break,
                },
            },
        };
        if urgent {
            shared.urgent_waiting.fetch_sub(1, Ordering::AcqRel);
        }
        if !lock().is_queued(&id) {
            continue; // an urgent copy of it went first
        }
        if stopping() {
            lock().abandon(&id);
            continue;
        }
        let admission = if urgent {
            shared.pacer.admit_urgent()
        } else {
            let waiting = lock().len();
            shared.catching_up(waiting);
            if shared.pacer.wants_floor() && syncer.breaker().outage().is_none() {
                // The cheapest request zooid answers: what any request costs, network
                // included, and so how much of a write's time is zooid's work.
                let _ = syncer.client().probe();
            }
            let urgent_waits = || stopping() || shared.jobs.front_is(|(_, urgent)| *urgent);
            match shared.pacer.admit(urgent_waits) {
                Some(admission) => admission,
                None => {
                    held = Some(id);
                    continue;
                }
            }
        };
        let answering = {
            let mut in_flight = lock();
            in_flight.start(&id);
            in_flight.take_requests(&id)
        };
        let prepared = syncer.prepare(&id);
        let job = Job {
            id,
            answering,
            prepared,
            admission,
        };
        if let Err(unsent) = shared.ready.push(job) {
            // Nothing takes prepared syncs any more: forget the relay.
            lock().abandon(&unsent.id);
            break;
        }
    }
    if let Some(id) = held {
        lock().abandon(&id);
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
            shared
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .abandon(&job.id);
            continue;
        }
        let Job {
            id: relay,
            answering,
            prepared,
            admission,
        } = job;
        let pacer = shared.pacer.clone();
        let (shared, me, retries) = (shared.clone(), syncer.clone(), retries.clone());
        syncer.send_then(prepared, move |outcome| {
            for request in answering {
                me.answer(request, &outcome);
            }
            match outcome {
                SyncOutcome::Synced { .. } => retries.cancel(&relay),
                SyncOutcome::NotRecorded(_) | SyncOutcome::Slow => {
                    retries.schedule(&relay, retry_later)
                }
                SyncOutcome::Failed(_)
                | SyncOutcome::Parked
                | SyncOutcome::Gone
                | SyncOutcome::Interrupted => {}
            }
            shared.finished(&relay);
        });
        drop(admission); // zooid has answered: the next write may go
        syncer.metrics().set_pace(pacer.state());
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::InFlight;

    #[test]
    fn a_burst_while_queued_costs_one_job() {
        let mut f = InFlight::default();
        assert!(f.request("a"));
        assert!(!f.request("a"));
        assert!(!f.request("a"));
        f.start("a");
        assert!(!f.finish("a"));
        assert!(f.is_empty());
    }

    #[test]
    fn a_burst_while_running_costs_one_more_sync() {
        let mut f = InFlight::default();
        assert!(f.request("a"));
        f.start("a");
        assert!(!f.request("a"));
        assert!(!f.request("a"));
        assert!(f.finish("a"), "changed while running: sync again");
        assert!(!f.finish("a"));
        assert!(f.request("a"), "idle again: a new job");
    }

    #[test]
    fn a_request_is_answered_by_a_sync_that_starts_after_it() {
        let mut f = InFlight::default();
        assert!(f.request("a"));
        f.start("a");
        assert!(f.take_requests("a").is_empty());
        // Asked for while a sync runs: that sync does not answer it; the next one does.
        assert!(!f.request_answer("a", 7));
        assert!(f.finish("a"), "synced again");
        assert_eq!(f.take_requests("a"), vec![7]);
        assert!(!f.finish("a"));
    }

    #[test]
    fn an_urgent_request_goes_ahead_of_its_queued_copy_and_the_copy_is_skipped() {
        let mut f = InFlight::default();
        assert!(f.request("a"), "queued in a backlog");
        assert!(f.request_urgent("a"), "queued again, at the front");
        assert!(f.is_queued("a"));
        f.start("a");
        assert!(!f.is_queued("a"));
        assert!(!f.request_urgent("a"), "running: marked dirty instead");
        assert!(f.finish("a"), "synced once more");
        f.start("a");
        assert!(!f.finish("a"));
        assert!(!f.is_queued("a"), "the copy left behind is skipped");
        assert!(f.request_urgent("b"), "not known: queued");
    }

    #[test]
    fn relays_are_independent() {
        let mut f = InFlight::default();
        assert!(f.request("a"));
        assert!(f.request("b"));
        f.start("a");
        assert!(!f.request("a"));
        f.start("b");
        assert!(!f.finish("b"));
        assert_eq!(f.len(), 1);
        assert!(f.finish("a"));
    }
}
