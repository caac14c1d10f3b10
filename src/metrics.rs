//! Counters an operator can scrape.
//!
//! [`Metrics`] is a handful of atomics shared by the dispatcher (retries, give-ups), the
//! writer and the feed; [`ZooidMetrics`] holds each zooid's own (outcomes, requests in flight,
//! request latency, its breaker, its pace, its pool's waiting work), handed to that zooid's
//! syncer, breaker, pool and sampler. Reading them never blocks a sync. [`Metrics::render`] is
//! the Prometheus text format, each zooid's series labelled `zooid="<name>"`, which the
//! binary's `/metrics` endpoint (`src/endpoint.rs`) serves.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::pace::{PaceState, Signal, UsersState};
use crate::store::{BadRow, WriteHealth};

/// A duration in whole microseconds, for a gauge.
fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// What [`Metrics::render`] shows beside the counters, read from the database or the store.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// Relays waiting for a sync.
    pub pending: Option<u64>,
    /// How this process's writes of outcomes fare.
    pub writes: Option<WriteHealth>,
}

/// Upper bounds of the request-latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// What the worker counts.
#[derive(Debug, Default)]
pub struct Metrics {
    retries_scheduled: AtomicU64,
    given_up: AtomicU64,
    bad_relay_rows: AtomicU64,
    /// Whether this process holds the database's lease and syncs (a standby does not).
    active: AtomicBool,
    bad_activity_rows: AtomicU64,
    /// Activity rows the store's feed skipped, as last read from the store.
    feed_bad_rows: AtomicU64,
    /// Threads of the worker that ended with a panic, by name (shared with their
    /// [`ThreadWatch`]es).
    died: Arc<Mutex<Vec<String>>>,
    /// When the dispatcher's loop last went round, in [`clock`] milliseconds (0: not running).
    dispatcher_beat: AtomicU64,
    /// Since when the writer thread has been committing, in [`clock`] milliseconds (0: not
    /// committing).
    writer_busy_since: AtomicU64,
    /// The part of the bound on work not moving that does not depend on the pace
    /// ([`Metrics::set_work_bound`]), in milliseconds; 0 until the worker sets it.
    work_bound_base_ms: AtomicU64,
    /// Each zooid's series, in the order the worker named them (the default zooid first).
    zooids: Mutex<Vec<Arc<ZooidMetrics>>>,
}

/// What the worker counts of one zooid: every zooid-facing series, labelled
/// `zooid="<name>"` in [`Metrics::render`] (`default` for `ZOOID_API_URL`'s).
#[derive(Debug, Default)]
pub struct ZooidMetrics {
    name: String,
    synced: AtomicU64,
    failed: AtomicU64,
    breaker_opened: AtomicU64,
    /// While its breaker is open.
    down: AtomicBool,
    /// While its breaker is open because it refuses the robot (401, 403, not its API).
    refused: AtomicBool,
    in_flight: AtomicI64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// The pacer's limit of writes in flight (0: not known yet).
    write_limit: AtomicU64,
    /// The pacer's spacing of a backlog's writes, in microseconds.
    write_spacing_micros: AtomicU64,
    /// A write's smoothed latency at zooid, in microseconds (0: not known yet).
    write_latency_micros: AtomicU64,
    /// What a write costs zooid's core in all, as the pacer believes, in microseconds.
    write_cost_micros: AtomicU64,
    /// Whether the pacer learns from relay users' answers (1) or zooid's alone (0).
    pacing_by_users: AtomicBool,
    /// What a relay user waits while zooid-sync is quiet, and now (medians, microseconds;
    /// 0: not known).
    user_idle_micros: AtomicU64,
    user_now_micros: AtomicU64,
    /// zooid-sync's share of zooid's core over the last window, in millionths.
    busy_share_ppm: AtomicU64,
    /// How much slower than their cost writes go because users feel them, in thousandths.
    user_penalty_milli: AtomicU64,
    /// Relays the existence audit asked this zooid about, and those it no longer had.
    audit_checks: AtomicU64,
    audit_missing: AtomicU64,
    /// Relays waiting in this zooid's pool for their sync to start.
    work_waiting: AtomicU64,
    /// When a relay's sync last started or ended, or work began to wait, in [`clock`]
    /// milliseconds (0: never).
    work_moved_at: AtomicU64,
    /// Whether the stall of this zooid's work was logged.
    work_stall_logged: AtomicBool,
}

/// This crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit this build comes from (`unknown` outside a git checkout; `build.rs`).
pub const COMMIT: &str = env!("ZOOID_SYNC_COMMIT");

/// Milliseconds on a monotonic clock that starts with the process, never 0.
pub(crate) fn clock() -> u64 {
    static START: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

/// How long the dispatcher may go without a round, or the writer spend on one commit, before
/// the worker counts as stalled. The dispatcher goes round at least every 200 ms and never
/// waits on the network; the writer's longest legitimate wait is the database's busy timeout
/// (5 s) per attempt. Thirty seconds is far beyond both, and short enough that a watchdog
/// restarts a hung daemon within a minute.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// Why the worker is stalled, if it is: the dispatcher has not gone round, or the writer has
/// been on one commit, for longer than `bound`. `now`, `beat` and `busy_since` are `clock`
/// milliseconds; 0 means "not running" and "not committing".
pub fn stalled(now: u64, beat: u64, busy_since: u64, bound: Duration) -> Option<String> {
    let bound_ms = bound.as_millis() as u64;
    let age = |t: u64| now.saturating_sub(t);
    if beat != 0 && age(beat) > bound_ms {
        return Some(format!(
            "the dispatcher has not moved for {} s",
            age(beat) / 1000
        ));
    }
    if busy_since != 0 && age(busy_since) > bound_ms {
        return Some(format!(
            "the writer has been on one commit for {} s",
            age(busy_since) / 1000
        ));
    }
    None
}

/// Why the worker's work does not move, if it does not: `waiting` relays wait for their sync
/// to start, and none has started or ended since `moved` (a [`clock`] millisecond, 0: never)
/// for longer than `bound`. Only asked while zooid answers and the breaker is closed: while
/// it is open, nothing is sent on purpose.
pub(crate) fn work_stalled(now: u64, waiting: u64, moved: u64, bound: Duration) -> Option<String> {
    let still = now.saturating_sub(moved);
    if waiting == 0 || moved == 0 || still <= bound.as_millis() as u64 {
        return None;
    }
    Some(format!(
        "{} to sync, and none has started for {} s while zooid answers (the bound is {} s)",
        crate::words::plural(waiting, "relay waits", "relays wait"),
        still / 1000,
        bound.as_secs()
    ))
}

/// How long work may wait without a sync starting, beyond what the pace explains: the slack
/// for a loaded machine.
pub(crate) const WORK_SLACK: Duration = Duration::from_secs(5);

/// The bound on work not moving, for a pace whose backlog writes are `spacing` apart, requests
/// that time out after `timeout`, and a ceiling of `max_rate` requests a second (0: none).
///
/// A backlog's next write waits at most its turn (fresh work pushes it back by at most
/// [`crate::pace::DEBT_SPACINGS`] spacings, and one more is its own), the write in
/// flight before it and the floor's probe (a timeout each), and a token of the rate ceiling
/// (its burst may be spent: two intervals); three spacings, two timeouts, two ceiling
/// intervals and [`WORK_SLACK`] are beyond all of it.
pub(crate) fn work_bound(spacing: Duration, timeout: Duration, max_rate: f64) -> Duration {
    let ceiling = match max_rate > 0.0 {
        true => Duration::try_from_secs_f64(2.0 / max_rate).unwrap_or(Duration::MAX),
        false => Duration::ZERO,
    };
    spacing
        .saturating_mul(3)
        .saturating_add(timeout.saturating_mul(2))
        .saturating_add(ceiling)
        .saturating_add(WORK_SLACK)
}

impl crate::liveness::WriterWatch for Metrics {
    fn writer_started(&self) -> Box<dyn Send> {
        Box::new(self.watch_thread("zooid-sync-writer"))
    }

    fn writer_busy(&self, busy: bool) {
        let since = if busy { clock() } else { 0 };
        self.writer_busy_since.store(since, Ordering::Relaxed);
    }
}

/// Held by a thread of the worker for its whole life (see [`Metrics::watch_thread`]): if the
/// thread ends with a panic, the worker is unhealthy and says so.
pub(crate) struct ThreadWatch {
    died: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Drop for ThreadWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            log::error!(
                "the {} thread died (a bug in zooid-sync; please report it): the worker is \
                 unhealthy, restart it",
                self.name
            );
            self.died
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.name.clone());
        }
    }
}

impl Metrics {
    /// Watches the calling thread, `name`, until the guard is dropped: a panic that ends it
    /// is counted and turns `/healthz` to 503.
    pub(crate) fn watch_thread(&self, name: &str) -> ThreadWatch {
        ThreadWatch {
            died: self.died.clone(),
            name: name.to_string(),
        }
    }

    /// The series of the zooid named `name`, made the first time it is asked for: the worker
    /// asks for each zooid at its start, the default one first.
    pub(crate) fn zooid(&self, name: &str) -> Arc<ZooidMetrics> {
        let mut zooids = self.zooids.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = zooids.iter().find(|z| z.name == name) {
            return found.clone();
        }
        let made = Arc::new(ZooidMetrics {
            name: name.to_string(),
            ..ZooidMetrics::default()
        });
        zooids.push(made.clone());
        made
    }

    /// Every zooid's series, the default zooid's first.
    fn zooids(&self) -> Vec<Arc<ZooidMetrics>> {
        self.zooids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The dispatcher went round its loop.
    pub(crate) fn dispatcher_beat(&self) {
        self.dispatcher_beat.store(clock(), Ordering::Relaxed);
    }

    /// The dispatcher stopped (a stopped dispatcher is not a stalled one).
    pub(crate) fn dispatcher_stopped(&self) {
        self.dispatcher_beat.store(0, Ordering::Relaxed);
    }

    /// Sets the part of the bound on work not moving that the settings fix (see
    /// [`work_bound`]): requests time out after `timeout`, at most `max_rate` a second.
    pub(crate) fn set_work_bound(&self, timeout: Duration, max_rate: f64) {
        let base = work_bound(Duration::ZERO, timeout, max_rate);
        let ms = base.as_millis().min(u64::MAX as u128) as u64;
        self.work_bound_base_ms.store(ms, Ordering::Relaxed);
    }

    /// The part of the bound on work not moving that the settings fix.
    fn work_bound_base(&self) -> Duration {
        match self.work_bound_base_ms.load(Ordering::Relaxed) {
            0 => work_bound(Duration::ZERO, Duration::from_secs(5), 0.0),
            ms => Duration::from_millis(ms),
        }
    }

    /// Why the worker does not make progress, if it does not: a loop that stopped (see
    /// [`stalled`]), or relays of a zooid that wait while none has started for longer than
    /// the bound `zooid_sync_work_stall_bound_seconds` shows, while that zooid answers.
    pub fn stall(&self) -> Option<String> {
        self.stall_at(clock())
    }

    /// [`stall`](Self::stall) as it is at `now` ([`clock`] milliseconds).
    fn stall_at(&self, now: u64) -> Option<String> {
        stalled(
            now,
            self.dispatcher_beat.load(Ordering::Relaxed),
            self.writer_busy_since.load(Ordering::Relaxed),
            STALL_AFTER,
        )
        .or_else(|| {
            self.zooids()
                .iter()
                .find_map(|z| self.work_stall_of(z, now))
        })
    }

    /// Why zooid `z`'s work does not move, if it does not and that zooid answers; a zooid
    /// other than the default one is named.
    fn work_stall_of(&self, z: &ZooidMetrics, now: u64) -> Option<String> {
        if !self.active() || z.down.load(Ordering::Relaxed) || z.refused.load(Ordering::Relaxed) {
            return None;
        }
        let why = work_stalled(
            now,
            z.work_waiting.load(Ordering::Relaxed),
            z.work_moved_at.load(Ordering::Relaxed),
            z.work_bound(self.work_bound_base()),
        )?;
        Some(match z.name == crate::env::DEFAULT_ZOOID {
            true => why,
            false => format!("at zooid {}: {why}", z.name),
        })
    }

    /// Logs, once, that a zooid's work stopped moving (an ERROR naming how many relays wait
    /// and since when) and, once, that it moves again. The dispatcher asks every round.
    pub(crate) fn check_work_moves(&self) {
        for z in self.zooids() {
            match self.work_change(&z, clock(), crate::time::now_unix()) {
                Some(WorkChange::Stuck(line)) => log::error!("{line}"),
                Some(WorkChange::Moves) => log::info!("the worker's work moves again"),
                None => {}
            }
        }
    }

    /// What changed about zooid `z`'s work moving since the last look, at `now` ([`clock`]
    /// milliseconds) and `unix_now`: what [`check_work_moves`](Self::check_work_moves) logs.
    fn work_change(&self, z: &ZooidMetrics, now: u64, unix_now: i64) -> Option<WorkChange> {
        let stall = self.work_stall_of(z, now);
        let logged = z.work_stall_logged.swap(stall.is_some(), Ordering::Relaxed);
        match (stall, logged) {
            (Some(why), false) => {
                let still = now.saturating_sub(z.work_moved_at.load(Ordering::Relaxed));
                let since = unix_now - (still / 1000) as i64;
                Some(WorkChange::Stuck(format!(
                    "the worker is stuck: {why}, since {} (a bug in zooid-sync; please \
                     report it). /healthz answers 503 and systemd's watchdog is no longer fed, \
                     so that the daemon is restarted",
                    crate::time::format_unix(since)
                )))
            }
            (None, true) => Some(WorkChange::Moves),
            _ => None,
        }
    }

    /// Whether the worker is healthy: no thread died and nothing is stalled. What the
    /// daemon's watchdog pings depend on.
    pub fn trouble(&self) -> Option<String> {
        let dead = self.dead_threads();
        if !dead.is_empty() {
            return Some(format!(
                "threads of the worker died: {} (a bug in zooid-sync; restart it)",
                dead.join(", ")
            ));
        }
        self.stall()
    }

    /// The worker's threads that died of a panic.
    pub fn dead_threads(&self) -> Vec<String> {
        self.died
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn retry_scheduled(&self) {
        self.retries_scheduled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn gave_up(&self) {
        self.given_up.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    /// Whether this process holds the database's lease and syncs.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether a zooid refuses this robot (its relays' syncs wait for the operator to fix it).
    pub fn robot_refused(&self) -> bool {
        self.zooids()
            .iter()
            .any(|z| z.refused.load(Ordering::Relaxed))
    }

    /// Whether every zooid answers, as far as their breakers know.
    pub fn zooid_up(&self) -> bool {
        !self.zooids().iter().any(|z| z.down.load(Ordering::Relaxed))
    }

    /// The activity rows the store's feed skipped so far (`Query::bad_activity_rows`), for
    /// `zooid_sync_bad_rows_total`.
    #[cfg(feature = "cli")]
    pub(crate) fn set_feed_bad_rows(&self, n: u64) {
        self.feed_bad_rows.store(n, Ordering::Relaxed);
    }

    /// Counts a host row that was skipped because it cannot be read.
    pub(crate) fn bad_row(&self, row: &BadRow) {
        let counter = match row.table {
            "relay" => &self.bad_relay_rows,
            _ => &self.bad_activity_rows,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of these counters and of `read`, what was read from
    /// the database for it. Every zooid-facing series has a line for each zooid, labelled
    /// `zooid="<name>"`.
    pub fn render(&self, read: &Read) -> String {
        let pending = read.pending;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let zooids = self.zooids();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        // One line for each zooid: `{zooid="eu"}`, or with more labels `{zooid="eu",k="v"}`.
        let each = |more: &str, value: &dyn Fn(&ZooidMetrics) -> String| -> Vec<(String, String)> {
            zooids
                .iter()
                .map(|z| {
                    let comma = if more.is_empty() { "" } else { "," };
                    (format!("{{zooid=\"{}\"{comma}{more}}}", z.name), value(z))
                })
                .collect()
        };
        let seconds = |a: &AtomicU64| format!("{}", a.load(Ordering::Relaxed) as f64 / 1e6);
        metric(
            "zooid_sync_build_info",
            "gauge",
            "Always 1; its labels say which zooid-sync this is.",
            &[(
                format!("{{version=\"{VERSION}\",commit=\"{COMMIT}\"}}"),
                "1".into(),
            )],
        );
        metric(
            "zooid_sync_syncs_total",
            "counter",
            "Relay syncs by zooid and outcome.",
            &[
                each("outcome=\"synced\"", &|z| get(&z.synced).to_string()),
                each("outcome=\"failed\"", &|z| get(&z.failed).to_string()),
            ]
            .concat(),
        );
        metric(
            "zooid_sync_retries_scheduled_total",
            "counter",
            "Retries scheduled after a failed sync.",
            &[(String::new(), get(&self.retries_scheduled).to_string())],
        );
        metric(
            "zooid_sync_relays_given_up_total",
            "counter",
            "Times a relay exhausted its retries.",
            &[(String::new(), get(&self.given_up).to_string())],
        );
        metric(
            "zooid_sync_audit_checks_total",
            "counter",
            "Relays the existence audit asked their zooid about (SYNC_AUDIT_INTERVAL).",
            &each("", &|z| get(&z.audit_checks).to_string()),
        );
        metric(
            "zooid_sync_audit_missing_total",
            "counter",
            "Relays the audit found their zooid no longer had; each is created again.",
            &each("", &|z| get(&z.audit_missing).to_string()),
        );
        metric(
            "zooid_sync_active",
            "gauge",
            "1 while this process holds the database's lease and syncs, 0 while it stands by.",
            &[(String::new(), (self.active() as u8).to_string())],
        );
        metric(
            "zooid_sync_zooid_up",
            "gauge",
            "1 while the zooid answers, 0 while its circuit breaker is open.",
            &each("", &|z| {
                u8::from(!z.down.load(Ordering::Relaxed)).to_string()
            }),
        );
        metric(
            "zooid_sync_zooid_refuses_robot",
            "gauge",
            "1 while the zooid refuses this robot (401, 403, or a host name that is not its \
             API): its relays' syncs wait until the operator fixes its side.",
            &each("", &|z| {
                u8::from(z.refused.load(Ordering::Relaxed)).to_string()
            }),
        );
        metric(
            "zooid_sync_breaker_opened_total",
            "counter",
            "Times the zooid was confirmed unavailable and its relays' syncs stopped.",
            &each("", &|z| get(&z.breaker_opened).to_string()),
        );
        metric(
            "zooid_sync_bad_rows_total",
            "counter",
            "Host rows skipped because they cannot be read, by table.",
            &[
                (
                    "{table=\"relay\"}".into(),
                    get(&self.bad_relay_rows).to_string(),
                ),
                (
                    "{table=\"activity\"}".into(),
                    (get(&self.bad_activity_rows) + get(&self.feed_bad_rows)).to_string(),
                ),
            ],
        );
        metric(
            "zooid_sync_thread_panics_total",
            "counter",
            "Threads of the worker that died of a panic (a bug); the worker is unhealthy.",
            &[(String::new(), self.dead_threads().len().to_string())],
        );
        if let Some(pending) = pending {
            metric(
                "zooid_sync_relays_pending",
                "gauge",
                "Relays waiting for a sync (synced = 0).",
                &[(String::new(), pending.to_string())],
            );
        }
        metric(
            "zooid_sync_requests_in_flight",
            "gauge",
            "Requests to the zooid in flight.",
            &each("", &|z| z.in_flight.load(Ordering::Relaxed).to_string()),
        );
        if let Some(writes) = &read.writes {
            metric(
                "zooid_sync_outcome_write_failures_total",
                "counter",
                "Writes of sync outcomes the database refused for a while (busy, locked, full, \
                 read-only); each is written again until it is recorded.",
                &[(String::new(), writes.failures.to_string())],
            );
            metric(
                "zooid_sync_outcomes_unrecorded",
                "gauge",
                "Sync outcomes zooid has but the database has not recorded yet.",
                &[(String::new(), writes.waiting.to_string())],
            );
            metric(
                "zooid_sync_database_writable",
                "gauge",
                "0 while the database refuses this process's writes, 1 otherwise.",
                &[(
                    String::new(),
                    u8::from(writes.failing.is_none()).to_string(),
                )],
            );
        }
        metric(
            "zooid_sync_relays_waiting",
            "gauge",
            "Relays waiting in the worker for their sync to start at the zooid (fresh work \
             and backlog).",
            &each("", &|z| get(&z.work_waiting).to_string()),
        );
        let now = clock();
        metric(
            "zooid_sync_work_stalled",
            "gauge",
            "1 while the zooid's relays wait and none has started for longer than \
             zooid_sync_work_stall_bound_seconds while it answers: the worker is stuck \
             (/healthz 503, the watchdog not fed).",
            &each("", &|z| {
                u8::from(self.work_stall_of(z, now).is_some()).to_string()
            }),
        );
        let base = self.work_bound_base();
        metric(
            "zooid_sync_work_stall_bound_seconds",
            "gauge",
            "How long the zooid's relays may wait with none started before the worker counts \
             as stuck: three write spacings, two ZOOID_TIMEOUTs, two SYNC_MAX_RATE intervals \
             and 5 s.",
            &each("", &|z| format!("{}", z.work_bound(base).as_secs_f64())),
        );
        metric(
            "zooid_sync_write_concurrency_limit",
            "gauge",
            "The most writes to the zooid in flight now, as the pacer learned from its answers.",
            &each("", &|z| get(&z.write_limit).to_string()),
        );
        metric(
            "zooid_sync_write_spacing_seconds",
            "gauge",
            "The time between two writes of a catch-up: the zooid's work for one write divided \
             by SYNC_ZOOID_SHARE.",
            &each("", &|z| seconds(&z.write_spacing_micros)),
        );
        metric(
            "zooid_sync_zooid_write_seconds",
            "gauge",
            "How long the zooid takes to answer a write, smoothed over recent writes.",
            &each("", &|z| seconds(&z.write_latency_micros)),
        );
        metric(
            "zooid_sync_zooid_write_cost_seconds",
            "gauge",
            "What one write costs the zooid's core in all, its work after the answer included, \
             as the pacer learned it: the spacing is this over SYNC_ZOOID_SHARE.",
            &each("", &|z| seconds(&z.write_cost_micros)),
        );
        metric(
            "zooid_sync_pacing_by_users",
            "gauge",
            "1 while catch-ups are paced by what the zooid's relay users feel (their NIP-11 \
             requests), 0 while by its answers alone (SYNC_PACING=answers, or it does not \
             answer relay users at its API's address).",
            &each("", &|z| {
                u8::from(z.pacing_by_users.load(Ordering::Relaxed)).to_string()
            }),
        );
        metric(
            "zooid_sync_user_wait_seconds",
            "gauge",
            "What a relay user waits for the zooid's answer (median), while zooid-sync is quiet \
             (when=\"idle\") and over the last samples of a catch-up (when=\"now\"); 0 until \
             measured.",
            &[
                each("when=\"idle\"", &|z| seconds(&z.user_idle_micros)),
                each("when=\"now\"", &|z| seconds(&z.user_now_micros)),
            ]
            .concat(),
        );
        metric(
            "zooid_sync_zooid_busy_share",
            "gauge",
            "The share of the zooid's core zooid-sync's writes took over the last 10 s of a \
             catch-up, as relay users' answers show it; held at most at SYNC_ZOOID_SHARE.",
            &each("", &|z| format!("{}", get(&z.busy_share_ppm) as f64 / 1e6)),
        );
        metric(
            "zooid_sync_user_penalty",
            "gauge",
            "How much slower than their cost a catch-up's writes go because relay users wait \
             more than SYNC_USER_DELAY above idle (1: not at all).",
            &each("", &|z| {
                format!("{}", get(&z.user_penalty_milli).max(1000) as f64 / 1e3)
            }),
        );
        let mut histogram = Vec::new();
        for z in &zooids {
            let label = format!("zooid=\"{}\"", z.name);
            for (bound, n) in BUCKETS.iter().zip(&z.latency_buckets) {
                histogram.push((
                    format!("_bucket{{{label},le=\"{bound}\"}}"),
                    get(n).to_string(),
                ));
            }
            let count = get(&z.latency_count);
            histogram.push((format!("_bucket{{{label},le=\"+Inf\"}}"), count.to_string()));
            histogram.push((
                format!("_sum{{{label}}}"),
                format!("{}", get(&z.latency_sum_micros) as f64 / 1e6),
            ));
            histogram.push((format!("_count{{{label}}}"), count.to_string()));
        }
        metric(
            "zooid_sync_request_duration_seconds",
            "histogram",
            "Latency of requests to the zooid.",
            &histogram,
        );
        out
    }
}

impl ZooidMetrics {
    /// What the pacer says now: its limit of writes in flight, its spacing of a backlog's
    /// writes, a write's smoothed latency and cost, and where it learns them.
    pub(crate) fn set_pace(&self, pace: &PaceState) {
        self.write_limit.store(pace.limit as u64, Ordering::Relaxed);
        self.write_spacing_micros
            .store(micros(pace.spacing), Ordering::Relaxed);
        self.write_latency_micros
            .store(pace.write_latency.map_or(0, micros), Ordering::Relaxed);
        self.write_cost_micros
            .store(pace.write_cost.map_or(0, micros), Ordering::Relaxed);
        self.pacing_by_users
            .store(pace.signal == Signal::Users, Ordering::Relaxed);
    }

    /// What relay users' answers say now (see [`crate::pace::users`]).
    pub(crate) fn set_users(&self, users: &UsersState) {
        self.user_idle_micros
            .store(users.idle.map_or(0, micros), Ordering::Relaxed);
        self.user_now_micros
            .store(users.felt.map_or(0, micros), Ordering::Relaxed);
        let ppm = users.busy_share.map_or(0.0, |s| s * 1e6);
        self.busy_share_ppm.store(ppm as u64, Ordering::Relaxed);
        self.user_penalty_milli
            .store((users.penalty * 1e3) as u64, Ordering::Relaxed);
    }

    /// `n` relays wait in this zooid's pool for their sync to start. When work begins to
    /// wait, the clock of [`work_moved`](Self::work_moved) starts.
    pub(crate) fn work_waiting(&self, n: usize) {
        let before = self.work_waiting.swap(n as u64, Ordering::Relaxed);
        if before == 0 && n > 0 {
            self.work_moved();
        }
    }

    /// A relay's sync started or ended: the work moves.
    pub(crate) fn work_moved(&self) {
        self.work_moved_at.store(clock(), Ordering::Relaxed);
    }

    /// The bound on this zooid's work not moving now: `base` and its pace's spacing.
    fn work_bound(&self, base: Duration) -> Duration {
        let spacing = Duration::from_micros(self.write_spacing_micros.load(Ordering::Relaxed));
        base.saturating_add(spacing.saturating_mul(3))
    }

    pub(crate) fn synced(&self) {
        self.synced.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn audit_checked(&self) {
        self.audit_checks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn audit_missing(&self) {
        self.audit_missing.fetch_add(1, Ordering::Relaxed);
    }

    /// The breaker opened: the zooid is confirmed unavailable.
    pub(crate) fn breaker_opened(&self) {
        self.breaker_opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the zooid's breaker is open (`down`), and whether because it refuses the robot.
    pub(crate) fn set_state(&self, down: bool, refused: bool) {
        self.down.store(down, Ordering::Relaxed);
        self.refused.store(refused, Ordering::Relaxed);
    }

    /// Counts a request to the zooid in flight until the guard is dropped, then records its
    /// latency.
    pub(crate) fn request(&self) -> RequestTimer<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestTimer {
            metrics: self,
            started: std::time::Instant::now(),
        }
    }

    fn observe(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }
}

/// What [`Metrics::check_work_moves`] has to say.
#[derive(Debug, PartialEq, Eq)]
enum WorkChange {
    /// Work stopped moving: the ERROR.
    Stuck(String),
    /// It moves again.
    Moves,
}

/// See [`ZooidMetrics::request`].
pub(crate) struct RequestTimer<'a> {
    metrics: &'a ZooidMetrics,
    started: std::time::Instant,
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.observe(self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::WriterWatch;

    #[test]
    fn renders_counters_gauges_and_a_cumulative_histogram() {
        let m = Metrics::default();
        let (home, eu) = (m.zooid("default"), m.zooid("eu"));
        assert!(
            Arc::ptr_eq(&home, &m.zooid("default")),
            "one series a zooid"
        );
        assert!(m.zooid_up() && !m.robot_refused(), "every zooid answers");
        m.gave_up();
        eu.audit_checked();
        eu.audit_checked();
        eu.audit_missing();
        let row = |table| BadRow {
            table,
            key: 1,
            error: "bad".into(),
        };
        m.bad_row(&row("relay"));
        m.bad_row(&row("relay"));
        m.bad_row(&row("activity"));
        home.set_pace(&PaceState {
            limit: 3,
            spacing: Duration::from_millis(240),
            write_latency: Some(Duration::from_millis(60)),
            write_cost: Some(Duration::from_millis(90)),
            signal: Signal::Users,
        });
        eu.set_pace(&PaceState {
            limit: 1,
            spacing: Duration::ZERO,
            write_latency: None,
            write_cost: None,
            signal: Signal::Answers,
        });
        home.set_users(&UsersState {
            idle: Some(Duration::from_micros(300)),
            felt: Some(Duration::from_micros(700)),
            busy_share: Some(0.25),
            penalty: 1.5,
        });
        home.synced();
        home.synced();
        home.failed();
        eu.synced();
        m.retry_scheduled();
        home.observe(Duration::from_millis(20));
        home.observe(Duration::from_secs(3));
        eu.breaker_opened();
        eu.set_state(true, true);
        #[cfg(feature = "cli")]
        m.set_feed_bad_rows(4);
        #[cfg(not(feature = "cli"))]
        m.feed_bad_rows.store(4, Ordering::Relaxed);
        let text = m.render(&Read {
            pending: Some(7),
            writes: Some(WriteHealth {
                failures: 3,
                waiting: 2,
                failing: Some((1, "disk full".into())),
            }),
        });
        let has = |line: &str| assert!(text.contains(&format!("\n{line}\n")), "{line}\n{text}");
        has("zooid_sync_user_wait_seconds{zooid=\"default\",when=\"idle\"} 0.0003");
        has("zooid_sync_user_wait_seconds{zooid=\"default\",when=\"now\"} 0.0007");
        has("zooid_sync_zooid_busy_share{zooid=\"default\"} 0.25");
        has("zooid_sync_user_penalty{zooid=\"default\"} 1.5");
        has("zooid_sync_user_penalty{zooid=\"eu\"} 1");
        has("zooid_sync_pacing_by_users{zooid=\"default\"} 1");
        has("zooid_sync_pacing_by_users{zooid=\"eu\"} 0");
        has("zooid_sync_write_concurrency_limit{zooid=\"default\"} 3");
        has("zooid_sync_write_spacing_seconds{zooid=\"default\"} 0.24");
        has("zooid_sync_zooid_write_seconds{zooid=\"default\"} 0.06");
        has("zooid_sync_zooid_write_cost_seconds{zooid=\"default\"} 0.09");
        has("zooid_sync_zooid_write_seconds{zooid=\"eu\"} 0");
        has("zooid_sync_relays_given_up_total 1");
        has("zooid_sync_audit_checks_total{zooid=\"eu\"} 2");
        has("zooid_sync_audit_missing_total{zooid=\"eu\"} 1");
        has("zooid_sync_audit_checks_total{zooid=\"default\"} 0");
        has("zooid_sync_bad_rows_total{table=\"relay\"} 2");
        has("zooid_sync_syncs_total{zooid=\"default\",outcome=\"synced\"} 2");
        has("zooid_sync_syncs_total{zooid=\"eu\",outcome=\"synced\"} 1");
        has("zooid_sync_syncs_total{zooid=\"default\",outcome=\"failed\"} 1");
        has("zooid_sync_syncs_total{zooid=\"eu\",outcome=\"failed\"} 0");
        has("zooid_sync_zooid_up{zooid=\"default\"} 1");
        has("zooid_sync_zooid_up{zooid=\"eu\"} 0");
        has("zooid_sync_zooid_refuses_robot{zooid=\"eu\"} 1");
        has("zooid_sync_breaker_opened_total{zooid=\"eu\"} 1");
        has("zooid_sync_breaker_opened_total{zooid=\"default\"} 0");
        has("zooid_sync_user_wait_seconds{zooid=\"eu\",when=\"idle\"} 0");
        assert!(!m.zooid_up() && m.robot_refused(), "one of two zooids down");
        assert!(text.contains("zooid_sync_retries_scheduled_total 1"));
        has("zooid_sync_bad_rows_total{table=\"activity\"} 5");
        assert!(text.contains("zooid_sync_relays_pending 7"));
        assert!(text.contains("zooid_sync_outcome_write_failures_total 3"));
        assert!(text.contains("zooid_sync_outcomes_unrecorded 2"));
        assert!(text.contains("zooid_sync_database_writable 0"));
        has("zooid_sync_request_duration_seconds_bucket{zooid=\"default\",le=\"0.01\"} 0");
        has("zooid_sync_request_duration_seconds_bucket{zooid=\"default\",le=\"0.025\"} 1");
        has("zooid_sync_request_duration_seconds_bucket{zooid=\"default\",le=\"5\"} 2");
        has("zooid_sync_request_duration_seconds_bucket{zooid=\"default\",le=\"+Inf\"} 2");
        has("zooid_sync_request_duration_seconds_count{zooid=\"default\"} 2");
        has("zooid_sync_request_duration_seconds_count{zooid=\"eu\"} 0");
        // Each family's lines together, under one HELP and TYPE.
        assert_eq!(text.matches("# TYPE zooid_sync_zooid_up gauge").count(), 1);
        let timer = eu.request();
        assert!(m
            .render(&Read::default())
            .contains("zooid_sync_requests_in_flight{zooid=\"eu\"} 1\n"));
        drop(timer);
        assert!(m
            .render(&Read::default())
            .contains("zooid_sync_requests_in_flight{zooid=\"eu\"} 0\n"));
    }

    #[test]
    fn a_thread_that_dies_of_a_panic_is_named_and_counted() {
        let m = Arc::new(Metrics::default());
        let quiet = m.watch_thread("quiet");
        std::thread::spawn(move || drop(quiet)).join().unwrap();
        let watch = m.watch_thread("zooid-sync-worker-1");
        let died = std::thread::spawn(move || {
            let _watch = watch;
            panic!("a bug");
        })
        .join();
        assert!(died.is_err());
        assert_eq!(m.dead_threads(), vec!["zooid-sync-worker-1".to_string()]);
        let trouble = m.trouble().expect("a dead thread is trouble");
        assert!(trouble.contains("zooid-sync-worker-1"), "{trouble}");
        assert!(m
            .render(&Read::default())
            .contains("zooid_sync_thread_panics_total 1"));
    }

    #[test]
    fn the_worker_is_stalled_only_when_a_loop_has_not_moved_for_the_bound() {
        let bound = Duration::from_secs(30);
        assert_eq!(stalled(100_000, 0, 0, bound), None, "nothing running");
        assert_eq!(stalled(100_000, 70_000, 0, bound), None, "30 s exactly");
        let why = stalled(100_000, 69_999, 0, bound).unwrap();
        assert!(
            why.starts_with("the dispatcher has not moved for 30 s"),
            "{why}"
        );
        assert_eq!(stalled(100_000, 99_000, 70_000, bound), None);
        let why = stalled(100_000, 99_000, 60_000, bound).unwrap();
        assert!(
            why.starts_with("the writer has been on one commit for 40 s"),
            "{why}"
        );
        assert_eq!(
            stalled(1, 5_000, 5_000, bound),
            None,
            "a beat after now is fresh"
        );
        let m = Metrics::default();
        assert_eq!(m.trouble(), None);
        m.dispatcher_beat();
        m.writer_busy(true);
        assert_eq!(m.trouble(), None, "fresh beats");
        let later = clock() + 31_000;
        let why = m
            .stall_at(later)
            .expect("the dispatcher has not moved since");
        assert!(why.starts_with("the dispatcher"), "{why}");
        m.dispatcher_stopped();
        let why = m
            .stall_at(later)
            .expect("the writer is still on its commit");
        assert!(why.starts_with("the writer"), "{why}");
        m.writer_busy(false);
        assert_eq!(m.stall_at(later), None, "stopped and idle: nothing stalls");
    }

    #[test]
    fn work_stalls_only_when_relays_wait_and_none_started_for_the_bound() {
        let bound = Duration::from_secs(10);
        assert_eq!(work_stalled(100_000, 0, 1, bound), None, "nothing waits");
        assert_eq!(
            work_stalled(100_000, 3, 0, bound),
            None,
            "never moved: not running"
        );
        assert_eq!(
            work_stalled(100_000, 3, 90_000, bound),
            None,
            "10 s exactly"
        );
        let why = work_stalled(100_000, 3, 89_999, bound).unwrap();
        assert!(why.starts_with("3 relays wait to sync"), "{why}");
        assert!(
            why.contains("for 10 s") && why.contains("bound is 10 s"),
            "{why}"
        );
        let why = work_stalled(100_000, 1, 50_000, bound).unwrap();
        assert!(why.starts_with("1 relay waits to sync"), "{why}");
        assert_eq!(
            work_stalled(1, 3, 5_000, bound),
            None,
            "a move after now is fresh"
        );
    }

    #[test]
    fn the_bound_on_work_is_three_spacings_two_timeouts_two_ceiling_intervals_and_slack() {
        let s = Duration::from_secs;
        assert_eq!(work_bound(s(1), s(5), 0.0), s(3 + 10) + WORK_SLACK);
        assert_eq!(work_bound(s(1), s(5), 2.0), s(3 + 10 + 1) + WORK_SLACK);
        assert_eq!(
            work_bound(Duration::MAX, s(5), 1.0),
            Duration::MAX,
            "saturates"
        );
        let m = Metrics::default();
        m.set_work_bound(s(2), 0.0);
        let z = m.zooid("default");
        z.set_pace(&PaceState {
            limit: 1,
            spacing: Duration::from_millis(500),
            write_latency: None,
            write_cost: None,
            signal: Signal::Answers,
        });
        assert_eq!(
            z.work_bound(m.work_bound_base()),
            Duration::from_millis(5_500) + WORK_SLACK
        );
    }

    #[test]
    fn work_that_waits_without_moving_is_trouble_while_its_zooid_answers() {
        let m = Metrics::default();
        m.set_active(true);
        m.set_work_bound(Duration::from_secs(1), 0.0); // 7 s
        let (home, eu) = (m.zooid("default"), m.zooid("eu"));
        home.work_waiting(2);
        let moved = home.work_moved_at.load(Ordering::Relaxed);
        assert_ne!(moved, 0, "waiting starts the clock");
        assert_eq!(m.stall_at(moved + 7_000), None);
        let why = m.stall_at(moved + 7_001).expect("stalled");
        assert!(why.starts_with("2 relays wait"), "{why}");
        home.set_state(true, false);
        assert_eq!(m.stall_at(moved + 7_001), None, "the breaker is open");
        home.set_state(true, true);
        assert_eq!(m.stall_at(moved + 7_001), None, "zooid refuses the robot");
        home.set_state(false, false);
        // Another zooid's work stalls on its own, named; its being down stops only that.
        home.work_waiting(0);
        eu.work_waiting(3);
        let eu_moved = eu.work_moved_at.load(Ordering::Relaxed);
        let why = m.stall_at(eu_moved + 7_001).expect("eu's work stalls");
        assert!(why.starts_with("at zooid eu: 3 relays wait"), "{why}");
        eu.set_state(true, false);
        assert_eq!(m.stall_at(eu_moved + 7_001), None, "eu is down");
        home.work_waiting(2);
        let home_moved = home.work_moved_at.load(Ordering::Relaxed);
        assert!(
            m.stall_at(home_moved + 7_001).is_some(),
            "eu down says nothing about the default zooid's work"
        );
        eu.set_state(false, false);
        eu.work_waiting(0);
        m.set_active(false);
        assert_eq!(m.stall_at(home_moved + 7_001), None, "standing by");
        m.set_active(true);
        home.work_waiting(0);
        assert_eq!(m.stall_at(home_moved + 7_001), None, "nothing waits");
        // A mark no real clock reading equals.
        const LONG_AGO: u64 = 1 << 40;
        home.work_moved_at.store(LONG_AGO, Ordering::Relaxed);
        home.work_waiting(0);
        assert_eq!(
            home.work_moved_at.load(Ordering::Relaxed),
            LONG_AGO,
            "nothing waits still"
        );
        home.work_waiting(1);
        let again = home.work_moved_at.load(Ordering::Relaxed);
        assert!(again != LONG_AGO, "waiting again starts the clock again");
        home.work_moved_at.store(LONG_AGO, Ordering::Relaxed);
        home.work_waiting(3);
        assert_eq!(
            home.work_moved_at.load(Ordering::Relaxed),
            LONG_AGO,
            "more waiting does not"
        );
    }

    #[test]
    fn work_that_stops_moving_is_logged_once_with_since_when_and_once_when_it_moves() {
        let m = Metrics::default();
        m.set_active(true);
        m.set_work_bound(Duration::from_secs(1), 0.0); // 7 s
        let z = m.zooid("default");
        z.work_waiting(2);
        z.work_moved_at.store(40_000, Ordering::Relaxed);
        assert_eq!(
            m.work_change(&z, 47_000, 1_000_000),
            None,
            "within the bound"
        );
        let Some(WorkChange::Stuck(line)) = m.work_change(&z, 100_000, 1_000_000) else {
            panic!("stuck");
        };
        assert!(
            line.starts_with("the worker is stuck: 2 relays wait"),
            "{line}"
        );
        assert!(line.contains("for 60 s"), "{line}");
        // 60 s before 1 000 000.
        assert!(line.contains("since 1970-01-12 13:45:40 UTC"), "{line}");
        assert_eq!(m.work_change(&z, 101_000, 1_000_001), None, "said once");
        z.work_moved();
        assert_eq!(
            m.work_change(&z, clock(), 1_000_002),
            Some(WorkChange::Moves)
        );
        assert_eq!(m.work_change(&z, clock(), 1_000_003), None, "said once");
    }

    #[test]
    fn the_clock_starts_above_zero_and_moves() {
        let before = clock();
        std::thread::sleep(Duration::from_millis(3));
        let after = clock();
        assert!(before > 0 && after >= before + 3, "{before} -> {after}");
    }
}
