//! The existence audit: asking zooid, slowly and forever, whether it still has each relay.
//!
//! zooid-sync pushes a relay when the host changes it and otherwise never looks again, but
//! zooid can lose relays behind its back: a crash while it writes a relay's file, a restore
//! of its configuration directory from an older backup, a wrong `rm`. The audit thread walks
//! the relays marked synced, in id order, and asks zooid about one at a time with its cheapest
//! request (`GET /relay/{id}/members`, ~1 ms of zooid's time, where a write costs tens). The
//! steps are spread evenly over `SYNC_AUDIT_INTERVAL` (a pass of 1 000 relays over a day asks
//! once every 86 s), never in a burst, and every request goes through the client's rate
//! ceiling like any other.
//!
//! A relay zooid answers `404` about (its own `404`, not a host name that is not zooid) is
//! marked pending (`synced = 0`) and handed to the dispatcher: its sync finds it gone and
//! creates it again with a new secret (the `PATCH` → `404` heal in [`super::sync`]). An audit
//! never writes to zooid for a relay zooid has, and never touches a relay that is not synced:
//! pending relays and deletions are the sync's business.
//!
//! Each relay is asked about at the zooid it lives at, through that zooid's client and rate
//! ceiling. While the only zooid's breaker is open (it is down, or refuses the robot) the
//! audit waits; with several zooids, it passes over the relays of one whose breaker is open. Its place
//! in the pass and what it found so far are recorded in `worker_settings` ([`AUDIT_STATE`]),
//! at most once a minute and at the end of each pass, so a restarted daemon goes on where the
//! last one stopped, and `zooid-sync status` shows the last pass.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::Sender;

use super::sync::Zooid;
use crate::metrics::ThreadWatch;
use crate::pause::Pause;
use crate::store::{Command, Query};
use crate::time::now_unix;

/// The audit's state in `worker_settings`: the pass in progress (when it started, the last id
/// checked, how many were checked and found missing) and the last pass that ended (when, how
/// many checked, how many missing, and up to [`NAMED`] of the missing ids).
pub const AUDIT_STATE: [&str; 8] = [
    "audit_pass_started",
    "audit_cursor",
    "audit_checked",
    "audit_missing",
    "audit_last_ended",
    "audit_last_checked",
    "audit_last_missing",
    "audit_last_missing_ids",
];

/// How many missing relays a pass names in its record (the log names each one).
const NAMED: usize = 10;

/// The shortest time between two audit requests, whatever the fleet and the interval.
const MIN_SPACING: Duration = Duration::from_millis(1);

/// How often the pass's place is recorded while it runs.
const RECORD_EVERY: Duration = Duration::from_secs(60);

/// The time between two audit requests: the interval shared by the relays to check, at least
/// [`MIN_SPACING`]. With no relay to check, the interval itself (then it counts again).
pub fn spacing(interval: Duration, relays: u64) -> Duration {
    match u32::try_from(relays) {
        Ok(0) => interval,
        Ok(n) => (interval / n).max(MIN_SPACING),
        Err(_) => MIN_SPACING,
    }
}

/// When the next step is due: one spacing after the last one was due, or, when the audit fell
/// behind (zooid was down, the machine slept), one spacing from now: never a burst to catch up.
pub fn next_step(last_due: Instant, spacing: Duration, now: Instant) -> Instant {
    (last_due + spacing).max(now)
}

/// A pass of the audit: where it is and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pass {
    /// Unix time the pass started.
    pub started: i64,
    /// The last relay id checked; the next is the first synced relay after it.
    pub cursor: String,
    pub checked: u64,
    pub missing: u64,
}

impl Pass {
    fn starting_now() -> Pass {
        Pass {
            started: now_unix(),
            ..Pass::default()
        }
    }

    /// The pass a worker recorded, if it recorded one.
    pub fn from_recorded(recorded: &[(String, String)]) -> Option<Pass> {
        let get = |name: &str| recorded.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        Some(Pass {
            started: get(AUDIT_STATE[0])?.parse().ok()?,
            cursor: get(AUDIT_STATE[1])?.clone(),
            checked: get(AUDIT_STATE[2])?.parse().ok()?,
            missing: get(AUDIT_STATE[3])?.parse().ok()?,
        })
    }

    fn record(&self) -> [(&'static str, Option<String>); 4] {
        [
            (AUDIT_STATE[0], Some(self.started.to_string())),
            (AUDIT_STATE[1], Some(self.cursor.clone())),
            (AUDIT_STATE[2], Some(self.checked.to_string())),
            (AUDIT_STATE[3], Some(self.missing.to_string())),
        ]
    }
}

/// The audit's thread, stopped and joined on [`Audit::stop`] or drop.
pub struct Audit {
    pause: Arc<Pause>,
    thread: Option<JoinHandle<()>>,
}

/// What the audit needs from the worker.
pub struct Parts {
    pub query: Query,
    pub command: Command,
    /// Every zooid, the default one first: each relay is asked about at its own.
    pub zooids: Vec<Arc<Zooid>>,
    /// Relays found missing go here: the dispatcher syncs them.
    pub lost: Sender<String>,
}

impl Audit {
    /// Starts the audit, one pass every `interval`; `None` when `interval` is zero (off).
    pub fn start(interval: Duration, parts: Parts, watch: ThreadWatch) -> Result<Option<Audit>> {
        if interval.is_zero() {
            log::info!("the existence audit is off (SYNC_AUDIT_INTERVAL=0)");
            return Ok(None);
        }
        let pause = Arc::new(Pause::default());
        let paused = pause.clone();
        let thread = std::thread::Builder::new()
            .name("zooid-sync-audit".into())
            .spawn(move || {
                let _watch = watch;
                Auditor { parts, interval }.run(&paused)
            })
            .context("cannot start the audit thread")?;
        Ok(Some(Audit {
            pause,
            thread: Some(thread),
        }))
    }

    /// Stops the audit and waits for its thread (at most one request to zooid).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.pause.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What one audit request found.
enum Found {
    Exists,
    Missing,
    /// zooid did not say (unavailable, refusing the robot, or an answer that is neither).
    Unknown(String),
}

struct Auditor {
    parts: Parts,
    interval: Duration,
}

impl Auditor {
    fn run(&self, pause: &Pause) {
        let recorded = self.parts.query.worker_settings().unwrap_or_default();
        let mut pass = Pass::from_recorded(&recorded).unwrap_or_else(Pass::starting_now);
        let mut missing_ids = Vec::new();
        let mut relays = self.count();
        let mut due = Instant::now();
        let mut recorded_at = Instant::now();
        loop {
            if relays == 0 {
                relays = self.count(); // none synced yet: a fleet may have arrived since
            }
            due = next_step(due, spacing(self.interval, relays), Instant::now());
            if pause.until(due) {
                self.record(&pass.record());
                return;
            }
            let next = match self.parts.query.next_synced_relay_after(&pass.cursor) {
                Ok(next) => next,
                Err(e) => {
                    log::warn!("audit: {e:#}");
                    continue;
                }
            };
            let Some(id) = next else {
                self.end_pass(&pass, &missing_ids);
                pass = Pass::starting_now();
                missing_ids.clear();
                relays = self.count();
                recorded_at = Instant::now();
                continue;
            };
            let zooid = match self.zooid_of(&id) {
                Ok(Some(zooid)) => zooid,
                Ok(None) => {
                    // No setting names its zooid: nobody to ask; its sync says so.
                    log::debug!("audit: relay {id}: its zooid is not configured; passed over");
                    pass.cursor = id;
                    continue;
                }
                Err(e) => {
                    log::warn!("audit: {e:#}");
                    continue;
                }
            };
            // Its zooid down or refusing the robot says nothing about the relay: wait for it
            // (the only zooid), or pass this relay over (another's relays are asked about).
            if zooid.breaker.outage().is_some() {
                if self.parts.zooids.len() > 1 {
                    pass.cursor = id;
                }
                continue;
            }
            match self.check(zooid, &id) {
                Found::Exists => {}
                Found::Missing => {
                    pass.missing += 1;
                    if missing_ids.len() < NAMED {
                        missing_ids.push(id.clone());
                    }
                    self.lost(zooid, &id);
                }
                Found::Unknown(why) => log::debug!("audit: relay {id}: {why}"),
            }
            pass.checked += 1;
            pass.cursor = id;
            if recorded_at.elapsed() >= RECORD_EVERY {
                self.record(&pass.record());
                recorded_at = Instant::now();
            }
        }
    }

    /// How many relays a pass checks now (synced ones).
    fn count(&self) -> u64 {
        self.parts.query.count_synced().unwrap_or_else(|e| {
            log::warn!("audit: {e:#}");
            0
        })
    }

    /// The zooid relay `id` lives at; `None` when no setting names it.
    fn zooid_of(&self, id: &str) -> Result<Option<&Arc<Zooid>>> {
        let zooids = &self.parts.zooids;
        if zooids.len() == 1 {
            return Ok(zooids.first());
        }
        let column = self.parts.query.relay_zooid(id)?;
        let name = crate::env::zooid_named_by(&column);
        Ok(zooids.iter().find(|z| z.name == name))
    }

    fn check(&self, zooid: &Zooid, id: &str) -> Found {
        zooid.metrics.audit_checked();
        let client = &zooid.client;
        match client.request("GET", &format!("/relay/{id}/members"), None) {
            Ok(_) => Found::Exists,
            Err(e) if e.status() == Some(404) && client.robot_refusal(&e).is_none() => {
                Found::Missing
            }
            Err(e) => Found::Unknown(e.to_string()),
        }
    }

    /// A relay zooid no longer has: pending again, and handed to the dispatcher.
    fn lost(&self, zooid: &Zooid, id: &str) {
        zooid.metrics.audit_missing();
        log::info!("audit: zooid no longer has relay {id}; it is synced again");
        match self.parts.command.mark_lost(id) {
            Ok(_) => {
                let _ = self.parts.lost.send(id.to_string());
            }
            Err(e) => log::error!("audit: relay {id}: {e:#}"),
        }
    }

    fn end_pass(&self, pass: &Pass, missing_ids: &[String]) {
        log::info!(
            "audit: pass done: {} checked, {} missing at zooid{}",
            crate::words::plural(pass.checked, "relay", "relays"),
            pass.missing,
            match missing_ids {
                [] => String::new(),
                ids => format!(" ({})", ids.join(", ")),
            }
        );
        let mut state: Vec<(&str, Option<String>)> = vec![
            (AUDIT_STATE[4], Some(now_unix().to_string())),
            (AUDIT_STATE[5], Some(pass.checked.to_string())),
            (AUDIT_STATE[6], Some(pass.missing.to_string())),
            (AUDIT_STATE[7], Some(missing_ids.join(" "))),
        ];
        state.extend(Pass::starting_now().record());
        self.record(&state);
    }

    fn record(&self, state: &[(&str, Option<String>)]) {
        if let Err(e) = self.parts.command.record_worker_state(state) {
            log::warn!("audit: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_spreads_its_requests_over_the_interval() {
        let day = Duration::from_secs(86_400);
        assert_eq!(spacing(day, 1_000), Duration::from_millis(86_400));
        assert_eq!(spacing(day, 1), day);
        assert_eq!(spacing(day, 0), day, "nothing to check: look again later");
        assert_eq!(
            spacing(Duration::from_secs(1), 1_000_000),
            MIN_SPACING,
            "never faster than the floor"
        );
        assert_eq!(spacing(day, u64::MAX), MIN_SPACING);
    }

    #[test]
    fn a_late_step_is_not_followed_by_a_burst() {
        let t0 = Instant::now();
        let s = Duration::from_secs(10);
        assert_eq!(next_step(t0, s, t0), t0 + s, "on time: one spacing later");
        let late = t0 + Duration::from_secs(3600);
        assert_eq!(
            next_step(t0, s, late),
            late,
            "behind: from now, not all at once"
        );
    }

    #[test]
    fn a_new_pass_starts_now_at_the_first_relay() {
        let before = now_unix();
        let pass = Pass::starting_now();
        assert!((before..=now_unix()).contains(&pass.started), "{pass:?}");
        assert_eq!(
            (pass.cursor.as_str(), pass.checked, pass.missing),
            ("", 0, 0)
        );
    }

    #[test]
    fn the_audits_state_survives_the_settings_a_start_replaces() {
        // `Command::record_worker_settings` keeps the rows named `audit_*`.
        assert!(AUDIT_STATE.iter().all(|name| name.starts_with("audit_")));
    }

    #[test]
    fn a_recorded_pass_reads_back() {
        let pass = Pass {
            started: 1_700_000_000,
            cursor: "relay-42".into(),
            checked: 42,
            missing: 3,
        };
        let recorded: Vec<(String, String)> = pass
            .record()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.unwrap()))
            .collect();
        assert_eq!(Pass::from_recorded(&recorded), Some(pass));
        assert_eq!(Pass::from_recorded(&recorded[1..]), None, "incomplete");
        let mut garbled = recorded.clone();
        garbled[2].1 = "many".into();
        assert_eq!(Pass::from_recorded(&garbled), None);
    }
}
