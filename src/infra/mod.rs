//! The worker: [`Infra`], its dispatcher loop, and the threads it starts.
//!
//! `Infra::start` runs the dispatcher on the calling thread:
//!
//! 0. take the database's lease ([`crate::lease`]); while another process holds it, stand by
//!    and send nothing;
//! 1. subscribe to the bus (`command.notify`), start the timer thread and the pool;
//! 2. reconcile (`"startup"`): every pending relay is synced now if its last attempt did not
//!    fail, or gets a retry at its backoff if it did;
//! 3. loop: each activity about a relay is filtered: `create_relay`, `update_relay`,
//!    `activate_relay` and `deactivate_relay` hand the relay to the pool; `fail_relay_sync`
//!    schedules a retry; anything else is ignored. A due retry from the timer thread goes to
//!    the pool. `Lagged` means activities were lost: reconcile again (`"lagged"`). `Closed`
//!    (every strong bus sender gone) or a stop request ends the loop.
//! 4. stop: the pool finishes the syncs in flight (each bounded by the zooid timeout), queued
//!    work and scheduled retries are dropped (they are pending in the database and the next
//!    start's reconcile finds them), and `start` returns.
//!
//! When zooid is unavailable the [`breaker`] stops relay syncs and probes zooid; when zooid
//! answers again it tells the dispatcher, which reconciles (`"zooid answers again"`).
//!
//! Every [`REQUEST_POLL`] while busy (a second when quiet), and only after another connection
//! committed, it also looks for manual sync requests that `zooid-sync sync` left in
//! the database, and hands them to the pool like any other sync; and once the pool has been
//! idle for a second after a burst, it gives memory back (SQLite's page caches, and the free
//! heap the allocator keeps), so an idle daemon stays as small after 10 000 syncs as at start.
//!
//! The dispatcher never talks to zooid; it reads the database only to count a relay's trailing
//! failures and to list pending relays. The pool threads do the syncs; the timer thread only
//! keeps time. Outcomes come back to the dispatcher the same way as every other activity: on
//! the bus.

pub(crate) mod audit;
pub mod breaker;
pub(crate) mod lanes;
pub mod pool;
mod queue;
mod sampler;
pub mod sync;
pub mod timer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use crossbeam_channel::{select, Receiver, Sender};

use crate::env::Env;
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::retry::{random_unit, RetryDecision, RetryPolicy};
use crate::store::{
    activity_type, Activity, Command, PendingRelay, Query, RecvError, RELAY_RESOURCE,
    ZOOID_UNAVAILABLE,
};
use pool::Pool;
use sync::Syncer;
use timer::Retries;

/// The background worker that keeps zooid in step with the database.
pub struct Infra {
    env: Env,
    query: Query,
    command: Command,
    metrics: Arc<Metrics>,
    /// The database's lease, when the caller took it already.
    lease: Option<Lease>,
    #[cfg(feature = "fixture")]
    injected: Arc<sync::InjectedPanics>,
}

/// A running [`Infra`] on its own thread.
pub struct InfraHandle {
    stop: Sender<()>,
    alive: Arc<AtomicBool>,
    finished: Receiver<()>,
    thread: JoinHandle<Result<()>>,
}

impl InfraHandle {
    /// Stops intake, waits for the syncs in flight, and answers how the worker ended.
    pub fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(());
        self.join()
    }

    /// Waits for the worker to end by itself (when the bus closes).
    pub fn join(self) -> Result<()> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the zooid-sync dispatcher panicked")))
    }

    /// Waits up to `timeout` for the worker to end; answers whether it has.
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> bool {
        // The channel never carries a message: it disconnects when the worker ends.
        !matches!(
            self.finished.recv_timeout(timeout),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        )
    }

    /// Whether the worker has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// A flag that is true while the worker runs, for health checks.
    pub fn alive(&self) -> Arc<AtomicBool> {
        self.alive.clone()
    }

    /// A channel that disconnects when the worker ends, for `crossbeam_channel::select!`.
    #[doc(hidden)]
    pub fn finished(&self) -> &Receiver<()> {
        &self.finished
    }
}

impl Infra {
    /// A worker over this store, configured by `env`.
    pub fn new(query: Query, command: Command, env: &Env) -> Self {
        let metrics = Arc::new(Metrics::default());
        // Each zooid's series from the start, a standby's included, the default zooid first.
        for zooid in env.zooids() {
            metrics.zooid(&zooid.name);
        }
        Infra {
            env: env.clone(),
            query,
            command,
            metrics,
            lease: None,
            #[cfg(feature = "fixture")]
            injected: Arc::default(),
        }
    }

    /// Makes the next `times` syncs of relay `id` panic while sending, as a bug would: for
    /// tests of the worker's containment. Not for hosts.
    #[cfg(feature = "fixture")]
    #[doc(hidden)]
    pub fn inject_panic(&self, id: &str, times: u32) {
        self.injected.add(id, times);
    }

    /// Makes the worker's preparer hang when it comes to relay `id`, as a lost wake-up
    /// would: for tests of the liveness check that sees work not moving. Not for hosts.
    #[cfg(feature = "fixture")]
    #[doc(hidden)]
    pub fn inject_stall(&self, id: &str) {
        self.injected.stall_on(id);
    }

    /// A worker that runs under a lease its caller already holds, instead of taking it
    /// (see [`crate::lease`]).
    #[doc(hidden)]
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The worker's counters (see [`crate::metrics`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The members of relay `id`, from the zooid it lives at (`GET /relay/{id}/members`).
    pub fn list_relay_members(&self, id: &str) -> Result<Vec<String>> {
        crate::zooid::ZooidClient::for_relay(&self.env, Some(&self.query), id)?
            .list_relay_members(id)
    }

    /// Runs the worker on its own thread; see [`InfraHandle`]. Returns once the worker is
    /// listening and its startup reconcile has been handed out, or once it stands by because
    /// another process holds the database's lease (it takes over when that one stops).
    pub fn spawn(self) -> Result<InfraHandle> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let (ended, finished) = crossbeam_channel::bounded::<()>(0);
        let (ready_tx, ready) = crossbeam_channel::bounded::<()>(1);
        let alive = Arc::new(AtomicBool::new(true));
        let running = alive.clone();
        let watch = self.metrics.watch_thread("zooid-sync-dispatcher");
        let thread = std::thread::Builder::new()
            .name("zooid-sync-dispatcher".into())
            .spawn(move || {
                let _watch = watch;
                let _ended = ended; // dropped when the worker ends, whatever the outcome
                let result = self.run(stopped, Some(ready_tx));
                running.store(false, Ordering::Release);
                result
            })
            .context("cannot start the dispatcher thread")?;
        // Return once the worker listens and the startup reconcile is handed out, so that a
        // change the host makes from now on is dispatched once, not also found by the
        // reconcile. (If the worker fails to start, this returns and `join` tells why.)
        let _ = ready.recv();
        Ok(InfraHandle {
            stop,
            alive,
            finished,
            thread,
        })
    }

    /// Runs the worker on the calling thread until the bus closes (every strong
    /// [`Command`] handle dropped; the worker's own does not count). While another process
    /// holds the database's lease it stands by first, and nothing but that process ending
    /// ends the wait: a host that must be able to stop a standby uses [`Infra::spawn`].
    pub fn start(self) -> Result<()> {
        self.run(crossbeam_channel::never(), None)
    }

    /// The dispatcher. `ready` is told once the startup reconcile has handed out its work, or
    /// once the worker stands by.
    fn run(self, stop: Receiver<()>, ready: Option<Sender<()>>) -> Result<()> {
        let Infra {
            env,
            query,
            command,
            metrics,
            lease,
            #[cfg(feature = "fixture")]
            injected,
        } = self;
        check_zooid_column(&env, &query)?;
        let lease = match lease {
            Some(lease) => lease,
            None => {
                let standing_by = |holder: &crate::lease::Holder| {
                    log::info!(
                        "standing by: {holder} syncs {}; taking over when it stops",
                        query.path().display()
                    );
                    if let Some(ready) = &ready {
                        let _ = ready.send(());
                    }
                };
                match Lease::wait(query.path(), &stop, standing_by)? {
                    Some(lease) => lease,
                    None => return Ok(()), // stopped while standing by
                }
            }
        };
        let activities = command.notify.subscribe_to(is_dispatched);
        // Other processes' changes (the platform's web workers, jobs, admin tools) reach this
        // bus too, from now on.
        command.follow_other_writers();
        // From here on the worker's own handle must not keep the bus open.
        let command = {
            let weak = command.weak();
            drop(command);
            weak
        };
        let command_for_writer = command.clone();
        let (back_tx, mut back) = crossbeam_channel::unbounded();
        #[allow(unused_mut)]
        let mut syncers =
            Syncer::for_each_zooid(query.clone(), command, &env, metrics.clone(), back_tx)?;
        let mut probers = Vec::new();
        for syncer in &mut syncers {
            #[cfg(feature = "fixture")]
            {
                syncer.injected = injected.clone();
            }
            let breaker = syncer.breaker().clone();
            breaker.resume_recorded_outage(&query);
            let name = match syncer.zooid() {
                crate::env::DEFAULT_ZOOID => "zooid-sync-prober".to_string(),
                zooid => format!("zooid-sync-prober-{zooid}"),
            };
            let prober = breaker::spawn_prober(
                breaker.clone(),
                syncer.client().clone(),
                metrics.watch_thread(&name),
            )
            .context("cannot start the prober thread")?;
            probers.push((breaker, prober));
        }

        let (timer_tx, timer_rx) = crossbeam_channel::unbounded();
        let (due_tx, mut due_rx) = crossbeam_channel::unbounded();
        let timer = timer::spawn(timer_rx, due_tx, metrics.watch_thread("zooid-sync-timer"))
            .context("cannot start the timer thread")?;
        let retries = Arc::new(Retries::new(timer_tx));
        let writer = command_for_writer
            .spawn_writer(metrics.clone())
            .context("cannot start the writer thread")?;
        let (lost_tx, mut lost_rx) = crossbeam_channel::unbounded();
        let audit_parts = audit::Parts {
            query: query.clone(),
            command: command_for_writer.clone(),
            zooids: syncers.iter().map(|s| s.own_zooid().clone()).collect(),
            lost: lost_tx,
        };
        let served = match query.served_subdomains(3) {
            Ok(subdomains) => subdomains
                .into_iter()
                .map(|sub| format!("{sub}.{}", env.relay_domain))
                .collect(),
            Err(e) => {
                log::warn!("{e:#}");
                Vec::new()
            }
        };
        // One pool for each zooid: one zooid slow or down holds up only its own relays.
        let (moved_tx, mut moved_rx) = crossbeam_channel::unbounded();
        let handoff = pool::Handoff::new(moved_tx);
        let mut pools = Vec::new();
        for syncer in syncers {
            // The hosts served are the default zooid's (the others' are learned from their
            // first writes).
            let served = match syncer.zooid() == crate::env::DEFAULT_ZOOID {
                true => served.clone(),
                false => Vec::new(),
            };
            let zooid = syncer.zooid().to_string();
            let pool = Pool::start(
                env.sync_workers,
                syncer,
                retries.clone(),
                env.retry.base,
                served,
                handoff.clone(),
            );
            match pool {
                Ok(pool) => pools.push((zooid, pool)),
                Err(e) => {
                    for (_, pool) in pools {
                        pool.stop();
                    }
                    return Err(e).context("cannot start the worker threads");
                }
            }
        }
        drop(handoff);
        let dispatcher = Dispatcher {
            env: &env,
            query: &query,
            pools: &pools,
            retries: &retries,
            metrics: &metrics,
        };
        let (hex, npub) = env.robot.public_key_names();
        let zooids = match env.zooid_instances.is_empty() {
            true => format!("zooid at {}", env.zooid_api_url),
            false => env
                .zooids()
                .iter()
                .map(|z| format!("zooid {} at {}", z.name, z.url))
                .collect::<Vec<_>>()
                .join(", "),
        };
        log::info!(
            "zooid-sync started: database {}, {zooids}, robot {hex} ({npub}), {} workers{}",
            query.path().display(),
            env.sync_workers,
            match pools.len() {
                1 => String::new(),
                n => format!(" for each of {n} zooids"),
            }
        );

        record_settings(&env, &command_for_writer);
        dispatcher.reconcile("startup");
        let audit = audit::Audit::start(
            env.sync_audit_interval,
            audit_parts,
            metrics.watch_thread("zooid-sync-audit"),
        )?;
        metrics.set_active(true);
        if let Some(ready) = ready {
            let _ = ready.send(());
        }
        let mut last_request = 0;
        let mut ended = Ok(());
        // The database as last looked at for manual requests, and how long it has been quiet.
        let mut seen_version = None;
        let mut look = Looks::default();
        // Requests left by a `sync` that waited for an earlier worker are answered first.
        match query.changed(&mut seen_version) {
            Ok(_) => dispatcher.take_sync_requests(&mut last_request),
            Err(e) => log::error!("looking for manual sync requests: {e:#}"),
        }
        // The next look is due at a fixed time, whatever activity arrives meanwhile.
        let mut next_look = std::time::Instant::now() + look.next();
        metrics.set_work_bound(env.zooid_timeout, env.sync_max_rate);
        loop {
            metrics.dispatcher_beat();
            metrics.check_work_moves();
            let requests = crossbeam_channel::at(next_look);
            select! {
                recv(requests) -> _ => {
                    if let Err(e) = lease.check() {
                        log::error!("{e:#}");
                        ended = Err(e);
                        break;
                    }
                    // Manual requests are rows another process commits: nothing to read
                    // while nothing was committed.
                    match query.changed(&mut seen_version) {
                        Ok(false) => look.quiet(),
                        Ok(true) => {
                            look.busy();
                            dispatcher.take_sync_requests(&mut last_request);
                        }
                        Err(e) => log::error!("looking for manual sync requests: {e:#}"),
                    }
                    next_look = std::time::Instant::now() + look.next();
                    dispatcher.release_memory();
                }
                recv(activities.receiver()) -> message => match message {
                    Ok(activity) => {
                        if let Err(RecvError::Lagged(n)) = activities.take_lag() {
                            log::warn!("fell behind the activity bus by {n} activities; reconciling");
                            dispatcher.reconcile("lagged");
                        }
                        dispatcher.handle_activity(&activity);
                    }
                    Err(_) => {
                        log::info!("the activity bus closed; stopping");
                        break;
                    }
                },
                recv(due_rx) -> id => match id {
                    Ok(id) => {
                        log::debug!("relay {id}: retry due");
                        dispatcher.retries.fired(&id);
                        dispatcher.pool_for(&id).submit(&id);
                    }
                    // The timer thread ended (it is watched: a panic is reported): a
                    // disconnected channel is ready at once, so stop selecting it.
                    Err(_) => due_rx = crossbeam_channel::never(),
                },
                recv(back) -> zooid => match zooid.as_deref() {
                    Ok(crate::env::DEFAULT_ZOOID) => dispatcher.reconcile("zooid answers again"),
                    Ok(zooid) => dispatcher.reconcile(&format!("zooid {zooid} answers again")),
                    // The breakers hold the sender while the pools run; never spin on it.
                    Err(_) => back = crossbeam_channel::never(),
                },
                recv(moved_rx) -> moved => match moved {
                    // Another zooid's relay, or one another pool ran: to its zooid's pool now.
                    Ok((id, answering)) => dispatcher.hand_on(&id, answering),
                    Err(_) => moved_rx = crossbeam_channel::never(),
                },
                recv(lost_rx) -> id => match id {
                    Ok(id) => dispatcher.pool_for(&id).submit(&id),
                    // No audit (SYNC_AUDIT_INTERVAL=0), or it ended: a disconnected channel
                    // is ready at once and would spin this loop, so stop selecting it.
                    Err(_) => lost_rx = crossbeam_channel::never(),
                },
                recv(stop) -> _ => {
                    log::info!("stop requested; finishing the syncs in flight");
                    break;
                }
            }
        }

        if let Some(audit) = audit {
            audit.stop();
        }
        for (breaker, prober) in probers {
            breaker.stop();
            let _ = prober.join();
        }
        for (_, pool) in pools {
            pool.stop();
        }
        writer.stop(); // records the outcomes still queued, before the lease goes
        metrics.set_active(false);
        metrics.dispatcher_stopped();
        drop(lease);
        drop(retries);
        drop(due_rx);
        let _ = timer.join();
        log::info!("zooid-sync stopped");
        ended
    }
}

/// The dispatcher's decisions, borrowed from the running worker.
struct Dispatcher<'a> {
    env: &'a Env,
    query: &'a Query,
    /// One pool for each zooid, the default one first.
    pools: &'a [(String, Pool)],
    retries: &'a Retries,
    metrics: &'a Metrics,
}

/// Refuses to start when `ZOOID_INSTANCES` names zooids but the relay table has no `zooid`
/// column to assign relays to them.
fn check_zooid_column(env: &Env, query: &Query) -> Result<()> {
    if env.zooid_instances.is_empty() || query.has_zooid_column() {
        return Ok(());
    }
    anyhow::bail!(
        "ZOOID_INSTANCES names zooids, but the relay table has no zooid column to assign \
         relays to them: add it (ALTER TABLE relay ADD COLUMN zooid TEXT NOT NULL DEFAULT '') \
         or unset ZOOID_INSTANCES"
    )
}

/// The dispatcher's filter: activities about relays that change them or report a failed sync.
/// Applied when the bus delivers, so that ignored activities (every `complete_relay_sync`,
/// for one) never wake the dispatcher.
fn is_dispatched(activity: &Activity) -> bool {
    activity.resource_type == RELAY_RESOURCE
        && matches!(
            activity.activity_type.as_str(),
            activity_type::CREATE_RELAY
                | activity_type::UPDATE_RELAY
                | activity_type::ACTIVATE_RELAY
                | activity_type::DEACTIVATE_RELAY
                | activity_type::DELETE_RELAY
                | activity_type::FAIL_RELAY_SYNC
        )
}

/// Records the settings this worker runs with, for `zooid-sync status` to show what it does.
/// A failure to record them is logged: syncing does not depend on it.
fn record_settings(env: &Env, command: &Command) {
    let ms = |d: std::time::Duration| d.as_millis().to_string();
    let settings = [
        ("retry_base_ms", ms(env.retry.base)),
        ("retry_cap_ms", ms(env.retry.cap)),
        ("retry_max_attempts", env.retry.max_attempts.to_string()),
        ("relay_domain", env.relay_domain.clone()),
        ("zooid_api_url", env.zooid_api_url.clone()),
        ("zooid_timeout_ms", ms(env.zooid_timeout)),
        ("sync_workers", env.sync_workers.to_string()),
        ("sync_max_rate", env.sync_max_rate.to_string()),
        ("pid", std::process::id().to_string()),
        ("recorded_at", crate::time::now_unix().to_string()),
    ];
    if let Err(e) = command.record_worker_settings(&settings) {
        log::warn!("{e:#}; `zooid-sync status` shows the settings of its own environment");
    }
}

/// A delay to the millisecond, for a log line.
fn round_ms(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(d.as_millis() as u64)
}

/// How long the pool must have been idle after a burst before the worker gives memory back.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Manual sync requests found together up to this many are fresh; more (`sync --all`,
/// `sync --failed`) are a backlog.
const MANUAL_FRESH: usize = pool::FRESH_AT_ONCE;

/// How often the worker looks for manual sync requests (`zooid-sync sync`) in the database
/// while it is busy; after a quiet second it looks up to five times less often.
pub const REQUEST_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// How long the dispatcher waits before its next look at the database: [`REQUEST_POLL`]
/// while something changes, backing off to five times that once a second passed quietly.
#[derive(Debug, Default)]
struct Looks {
    quiet_for: std::time::Duration,
}

impl Looks {
    const QUIET_BEFORE_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
    const MAX_FACTOR: u32 = 5;

    fn next(&self) -> std::time::Duration {
        match self.quiet_for >= Self::QUIET_BEFORE_BACKOFF {
            true => REQUEST_POLL * Self::MAX_FACTOR,
            false => REQUEST_POLL,
        }
    }

    fn quiet(&mut self) {
        self.quiet_for += self.next();
    }

    fn busy(&mut self) {
        self.quiet_for = std::time::Duration::ZERO;
    }
}

impl Dispatcher<'_> {
    /// The pool of the zooid relay `id` lives at, as the database says now (the default
    /// zooid's when it names none, or one no setting names: its sync then fails, naming it).
    fn pool_for(&self, id: &str) -> &Pool {
        let default = &self.pools[0].1;
        if self.pools.len() == 1 {
            return default;
        }
        match self.query.relay_zooid(id) {
            Ok(column) => {
                let name = crate::env::zooid_named_by(&column);
                self.pools
                    .iter()
                    .find(|(zooid, _)| zooid == name)
                    .map_or(default, |(_, pool)| pool)
            }
            Err(e) => {
                log::warn!("{e:#}; its sync starts at the default zooid");
                default
            }
        }
    }

    /// Hands relay `id` to the pool of the zooid it lives at, as fresh work (a host's change
    /// moved it, or it waited for another pool), with the manual requests it answers.
    fn hand_on(&self, id: &str, answering: Vec<i64>) {
        let pool = self.pool_for(id);
        match answering.is_empty() {
            true => pool.submit_fresh(id),
            false => {
                for request in answering {
                    pool.submit_request(id, request, true);
                }
            }
        }
    }

    /// Gives back what bursts left: each pool that has settled after one (see
    /// [`Pool::settled`]) its own, and once no pool has work, the store's caches and the free
    /// heap.
    fn release_memory(&self) {
        let mut settled = false;
        for (_, pool) in self.pools {
            if pool.settled(SETTLE) {
                pool.release_memory();
                settled = true;
            }
        }
        if settled && self.pools.iter().all(|(_, pool)| pool.is_idle()) {
            self.query.release_memory();
            crate::memory::return_free_heap();
        }
    }
    /// Hands manual sync requests after `last` to the pool, and moves `last` past them. A
    /// request is answered by the relay's next sync that starts after it, never by one that
    /// runs beside another.
    fn take_sync_requests(&self, last: &mut i64) {
        match self.query.unanswered_sync_requests(*last) {
            Ok(requests) => {
                // An operator waits for a few relays; `sync --all` is a backlog.
                let fresh = requests.len() <= MANUAL_FRESH;
                for (request, relay) in requests {
                    log::info!("relay {relay}: manual sync requested ({request})");
                    *last = request;
                    self.pool_for(&relay).submit_request(&relay, request, fresh);
                }
            }
            Err(e) => log::error!("{e:#}"),
        }
    }

    fn handle_activity(&self, activity: &Activity) {
        if !is_dispatched(activity) {
            return;
        }
        let id = &activity.resource_id;
        if activity.activity_type == activity_type::FAIL_RELAY_SYNC {
            // A relay that failed because zooid is unavailable waits for the breaker, which
            // hands every such relay back when zooid answers again.
            if !activity.detail.starts_with(ZOOID_UNAVAILABLE) {
                self.schedule_relay_sync_retry(id, "failure");
            }
        } else {
            // A change the host just made: someone may be waiting for it.
            self.pool_for(id).submit_fresh(id);
        }
    }

    /// Syncs every pending relay now, or at its backoff if zooid refused its last attempt.
    /// A relay that waits because zooid was unavailable is synced now: if zooid still is,
    /// the breaker parks it again without a request.
    fn reconcile(&self, source: &str) {
        let pending = match self.query.list_relays_pending_sync() {
            Ok(pending) => pending,
            Err(e) => {
                log::error!("reconcile ({source}): {e:#}");
                return;
            }
        };
        // Deletions zooid has not confirmed are synced like pending relays: now, or at their
        // backoff.
        let deletions = match self.query.list_pending_deletions() {
            Ok(deletions) => deletions,
            Err(e) => {
                log::error!("reconcile ({source}): {e:#}");
                Vec::new()
            }
        };
        let deleted = deletions.len();
        let pending: Vec<_> = pending
            .into_iter()
            .chain(deletions.into_iter().map(|d| {
                Ok(PendingRelay {
                    id: d.id,
                    sync_error: d.sync_error,
                })
            }))
            .collect();
        let mut now = 0;
        let mut bad = 0;
        for relay in &pending {
            let relay = match relay {
                Ok(relay) => relay,
                Err(row) => {
                    bad += 1;
                    log::error!("reconcile ({source}): {row}");
                    self.metrics.bad_row(row);
                    continue;
                }
            };
            if relay.sync_error.is_empty() || relay.sync_error.starts_with(ZOOID_UNAVAILABLE) {
                now += 1;
                self.pool_for(&relay.id).submit(&relay.id);
            } else {
                self.schedule_relay_sync_retry(&relay.id, source);
            }
        }
        log::info!(
            "reconcile ({source}): {} pending{}, {now} synced now, {} after their backoff{}",
            crate::words::plural((pending.len() - bad) as u64, "relay", "relays"),
            match deleted {
                0 => String::new(),
                n => format!(" ({n} of them deleted by the host)"),
            },
            pending.len() - bad - now,
            match bad {
                0 => String::new(),
                n => format!(", {n} malformed rows skipped"),
            }
        );
    }

    /// Schedules the next attempt for a relay whose last sync failed, or gives up. The delay
    /// counts from when the last failure was recorded, so a restarted worker keeps the
    /// schedule instead of starting each delay over.
    fn schedule_relay_sync_retry(&self, id: &str, source: &str) {
        let (attempt, failed_at) = match self.query.trailing_sync_failures(id) {
            Ok(found) => found,
            Err(e) => {
                log::error!("relay {id}: cannot schedule a retry: {e:#}");
                return;
            }
        };
        match self.env.retry.decide(attempt, random_unit()) {
            RetryDecision::RetryAfter(delay) => {
                let now = crate::time::now_unix();
                let delay = RetryPolicy::remaining(delay, failed_at.unwrap_or(now), now);
                log::warn!(
                    "relay {id}: retry {attempt} in {} ({source})",
                    crate::words::show_duration(round_ms(delay))
                );
                self.metrics.retry_scheduled();
                self.retries.schedule(id, delay);
            }
            RetryDecision::GiveUp => {
                self.metrics.gave_up();
                log::warn!(
                    "relay {id}: gave up after {attempt} failed syncs; it waits for its next \
                     change or `zooid-sync sync {id}`"
                )
            }
            RetryDecision::NotNeeded => {
                log::debug!("relay {id}: no failure since its last success; no retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_back_off_after_a_quiet_second_and_come_back_at_once() {
        let mut look = Looks::default();
        for _ in 0..5 {
            assert_eq!(look.next(), REQUEST_POLL);
            look.quiet();
        }
        assert_eq!(look.next(), REQUEST_POLL * 5, "quiet for a second");
        look.quiet();
        assert_eq!(look.next(), REQUEST_POLL * 5);
        look.busy();
        assert_eq!(look.next(), REQUEST_POLL);
    }
}
