//! One relay's sync: read it, decide create or update, talk to zooid, heal, record.
//!
//! [`Syncer`] holds what a sync needs (the store, the zooid client, the settings) and is shared
//! by every pool thread and by `zooid-sync sync <id>`. It does not know about threads or
//! retries: it answers a [`SyncOutcome`] and the caller decides what comes next.
//!
//! A sync has two halves: [`Syncer::prepare`] reads the relay, builds its body and signs the
//! request; [`Syncer::send_then`] sends it and hands the outcome to the writer. The pool runs
//! them on different threads, so that one relay is prepared while another's request is in
//! flight; the foreground `sync` runs both in a row.
//!
//! A relay is *new* when it never completed a sync since it was created (`synced != 1` and no
//! `complete_relay_sync` activity after its last `create_relay`): it is created with `POST` and
//! a fresh secret. Any other relay is updated with `PATCH` and no secret. A relay whose row the
//! host deleted with a `delete_relay` activity is deleted with `DELETE`; `404` means zooid did
//! not have it, which is as good. Which of the three a sync sends is decided when it is
//! prepared, from what the host's rows say then, so a relay deleted while its create was in
//! flight is deleted by its next sync, and one created again after its deletion is created. Two answers are healed, each logged at `warn`:
//! `POST` → `409` because the id exists (a create that was never recorded) switches to `PATCH`;
//! `PATCH` → `404` (zooid lost the relay) creates it again with `POST` and a new secret. When
//! the fallback fails too, the original error is the one reported, so a schema or host conflict
//! stays a failure.
//!
//! **Zooids.** A syncer belongs to one zooid (its client, breaker and pacer), and knows every
//! other. A relay lives at the zooid its row names (`relay.zooid`, `''` for the default one);
//! `relay_placement` says where it was last synced, when that was not the default zooid. A
//! sync of a relay that lives at another zooid sends nothing ([`SyncOutcome::LivesElsewhere`]:
//! the pool hands it on); one whose zooid no setting names fails with
//! [`SyncError::UnknownZooid`], sends nothing and is not counted. A relay last synced to
//! another zooid than its own *moves*: it is created at its own (`POST`, a fresh secret, as a
//! new relay), then deleted at the other (`DELETE`, `404` as good), and only then recorded as
//! synced, with its new placement. Each step can be repeated: a crash in between runs the move
//! again (the `POST` answers `409` and heals to `PATCH`, the `DELETE` answers `404`). When the
//! `DELETE` fails, the failure is recorded with the placement `(new, leaving old)`, and the
//! next sync deletes it there after its own request. A deletion goes to where the relay lives,
//! and to the zooid it was leaving.
//!
//! Errors stay typed ([`SyncError`]) until the outcome is recorded, because what comes next
//! depends on the kind: a failure that says zooid is unavailable goes to the [`Breaker`] for a
//! verdict, and is recorded as `zooid is unavailable` (never counted toward giving up) when
//! zooid is confirmed down. While the breaker is open no request is sent: the relay is
//! *parked*, with one record per outage saying so.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::breaker::{Breaker, Verdict};
use crate::env::Env;
use crate::metrics::{Metrics, ZooidMetrics};
use crate::quote;
use crate::relay_config::relay_body;
use crate::rules::InvalidRelay;
use crate::secret::Secret;
use crate::store::{
    Command, Placement, Query, Relay, RelayForSync, RelayStatus, ZOOID_UNAVAILABLE,
};
use crate::time::format_unix;
use crate::zooid::{ProbeFailure, SignedRequest, ZooidClient, ZooidError};

/// Why a sync failed, kept typed until the outcome is recorded.
#[derive(Debug, Clone)]
pub enum SyncError {
    /// The relay's row, or its sync history, cannot be read.
    Unreadable(String),
    /// The relay cannot be sent as it is; nothing was sent.
    Invalid(InvalidRelay),
    /// zooid refused the relay, or failed for it alone while it answered otherwise.
    Refused(ZooidError),
    /// zooid is unavailable (confirmed by a probe, or the breaker was already open). Never
    /// counts toward giving up.
    ZooidUnavailable(String),
    /// The sync panicked: a bug in zooid-sync. It fails this relay only, and is retried.
    Bug(String),
    /// The relay names a zooid (or was last synced to one) that no setting names: nothing
    /// was sent. Never counts toward giving up; synced once a restart knows the zooid.
    UnknownZooid(String),
}

impl SyncError {
    /// Whether this failure counts toward giving up on the relay.
    pub fn counts(&self) -> bool {
        !matches!(
            self,
            SyncError::ZooidUnavailable(_) | SyncError::UnknownZooid(_)
        )
    }
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Unreadable(e) => f.write_str(e),
            SyncError::Invalid(e) => write!(f, "{e}"),
            SyncError::Refused(e) => write!(f, "{e}"),
            SyncError::ZooidUnavailable(e) => write!(f, "{ZOOID_UNAVAILABLE}: {e}"),
            SyncError::Bug(e) => f.write_str(e),
            // Recorded as unavailability: not counted, not retried, synced at the next start.
            SyncError::UnknownZooid(name) => write!(
                f,
                "{ZOOID_UNAVAILABLE}: no zooid is named {name:?} (where the relay lives, or was \
                 synced to): add {name}=<its API URL> to ZOOID_INSTANCES and restart \
                 zooid-sync; nothing was sent"
            ),
        }
    }
}

/// How a sync ended.
#[derive(Debug, Clone)]
pub enum SyncOutcome {
    /// zooid accepted the relay; the outcome is recorded.
    Synced {
        method: &'static str,
        status: u16,
        /// Whether the relay is now marked synced (false when it changed meanwhile).
        marked: bool,
    },
    /// The sync failed; the error is recorded as `fail_relay_sync`.
    Failed(SyncError),
    /// zooid is unavailable and the relay was told so earlier in this outage: nothing was
    /// sent or recorded. It is synced when zooid answers again.
    Parked,
    /// The relay no longer exists; nothing was sent or recorded.
    Gone,
    /// The worker stopped before zooid answered; nothing was recorded, and the relay is
    /// synced at the next start.
    Interrupted,
    /// zooid did not answer the write in time while it answers other requests: it is slow.
    /// Nothing was recorded (it does not count toward giving up); it is sent again later.
    Slow,
    /// The outcome could not be written to the database (it stays pending there).
    NotRecorded(String),
    /// The relay lives at the zooid of this name, not this syncer's: nothing was sent or
    /// recorded; its sync belongs to that zooid's pool.
    LivesElsewhere(String),
}

impl SyncOutcome {
    /// The answer to a manual sync request: `synced`, `failed`, `invalid` (the relay cannot
    /// be sent as it is) or `unknown` (there is no such relay), and a line saying more.
    pub fn answer(&self) -> (&'static str, String) {
        match self {
            SyncOutcome::Synced {
                method,
                status,
                marked,
            } => (
                "synced",
                match marked {
                    true => format!("{method} {status}"),
                    false => {
                        format!("{method} {status}; it changed meanwhile and is still pending")
                    }
                },
            ),
            SyncOutcome::Failed(e @ (SyncError::Invalid(_) | SyncError::Unreadable(_))) => {
                ("invalid", e.to_string())
            }
            SyncOutcome::Failed(e) => ("failed", e.to_string()),
            SyncOutcome::Parked => ("failed", format!("{ZOOID_UNAVAILABLE}; it waits for zooid")),
            SyncOutcome::Gone => ("unknown", "there is no such relay".into()),
            SyncOutcome::Interrupted => (
                "failed",
                "the worker stopped before zooid answered; it is synced at its next start".into(),
            ),
            SyncOutcome::Slow => (
                "failed",
                "zooid did not answer within ZOOID_TIMEOUT (it is slow); sent again later".into(),
            ),
            SyncOutcome::NotRecorded(e) => {
                ("failed", format!("the outcome could not be recorded: {e}"))
            }
            SyncOutcome::LivesElsewhere(zooid) => (
                "failed",
                format!("the relay lives at zooid {zooid}; its sync there follows"),
            ),
        }
    }
}

/// One zooid as the worker knows it: its name, its client (and with it its rate ceiling and
/// pacer) and its breaker.
#[derive(Debug)]
pub struct Zooid {
    /// `default` for `ZOOID_API_URL`, else its name in `ZOOID_INSTANCES`.
    pub name: String,
    /// Every request to this zooid goes through it.
    pub client: ZooidClient,
    /// Whether this zooid is fit for relay syncs.
    pub breaker: Arc<Breaker>,
    /// Its series in `/metrics`.
    pub metrics: Arc<ZooidMetrics>,
}

/// Syncs relays to one zooid and records the outcomes.
#[derive(Debug, Clone)]
pub struct Syncer {
    query: Query,
    command: Command,
    env: Env,
    metrics: Arc<Metrics>,
    /// The zooid this syncer syncs to.
    own: Arc<Zooid>,
    /// Every zooid, the default one first: where moves and deletions may go.
    zooids: Arc<[Arc<Zooid>]>,
    /// Panics injected by tests ([`crate::Infra::inject_panic`]).
    #[cfg(feature = "fixture")]
    pub(crate) injected: Arc<InjectedPanics>,
}

/// Relays whose next syncs panic while sending, and how many times, and the relay whose sync
/// the preparer hangs on: the way tests reach the containment of a bug that no known input
/// triggers, and the liveness check that sees work not moving.
#[cfg(feature = "fixture")]
#[derive(Debug, Default)]
pub(crate) struct InjectedPanics {
    panics: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    stall_on: std::sync::Mutex<Option<String>>,
}

#[cfg(feature = "fixture")]
impl InjectedPanics {
    pub(crate) fn add(&self, relay: &str, times: u32) {
        let mut map = self
            .panics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(relay.to_string()).or_default() += times;
    }

    fn maybe_panic(&self, relay: &str) {
        let mut map = self
            .panics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(left) = map.get_mut(relay).filter(|n| **n > 0) {
            *left -= 1;
            drop(map);
            panic!("injected panic while sending relay {relay}");
        }
    }

    /// From now on the preparer hangs when it comes to relay `id`, as a lost wake-up would
    /// leave it, until the pool stops.
    pub(crate) fn stall_on(&self, id: &str) {
        *self
            .stall_on
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id.to_string());
    }

    /// Hangs while `id` is the relay to stall on and `stopping` says no.
    pub(crate) fn maybe_stall(&self, id: &str, stopping: &impl Fn() -> bool) {
        let stalls = || {
            self.stall_on
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_deref()
                == Some(id)
        };
        if stalls() {
            log::warn!("relay {id}: the preparer hangs here, as injected");
        }
        while stalls() && !stopping() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A sync's exchange with zooid, before its outcome is recorded.
enum Attempt {
    /// zooid accepted the relay at `revision`.
    Accepted {
        relay_id: String,
        /// Where it now lives, to record, when that changed.
        placed: Option<Placement>,
        revision: i64,
        /// The relay's newest activity when the sync read it.
        seen: i64,
        done: Done,
        started: Instant,
    },
    /// zooid no longer has the relay the host deleted.
    Deleted {
        relay_id: String,
        done: Done,
        started: Instant,
    },
    /// The sync failed; the failure is to be recorded.
    Failed {
        relay_id: String,
        error: SyncError,
        started: Instant,
        /// The relay's newest activity when the sync read it, when it was read.
        seen: Option<i64>,
        /// Where it lives at zooid now, when the failed sync changed that (a move half done).
        placed: Option<Placement>,
    },
    /// Nothing to record: the relay is gone, or parked and told already.
    Quiet(SyncOutcome),
}

/// A sync prepared ahead of sending (see [`Syncer::prepare`]).
pub(crate) struct Prepared(Stage);

impl Prepared {
    /// A sync of relay `id` that failed before anything was sent (nothing was read that
    /// says which relay it was, so the failure is recorded on whatever holds the id).
    fn failed(id: &str, error: SyncError) -> Prepared {
        Prepared(Stage::Decided(Attempt::Failed {
            relay_id: id.to_string(),
            error,
            started: Instant::now(),
            seen: None,
            placed: None,
        }))
    }
}

enum Stage {
    /// The relay's first request is signed and ready to send.
    Ready(Box<Ready>),
    /// Nothing is to be sent: the relay is gone, or cannot be read or sent as it is.
    Decided(Attempt),
}

/// A relay read, with its first request signed.
struct Ready {
    target: Target,
    first: SignedRequest,
    /// A move: the zooid the relay is deleted at once it is created at its own.
    leaving: Option<Arc<Zooid>>,
    /// Where the relay lives at zooid once synced, to record, when that changes.
    placed: Option<Placement>,
}

/// What a sync brings zooid in line with. (The relay is the common, large case; a `Ready`
/// travels boxed.)
#[allow(clippy::large_enum_variant)]
enum Target {
    /// The relay as the host has it: created or updated.
    Relay {
        relay: Relay,
        /// The secret a `POST` of this relay carries, once one was generated.
        secret: Option<Secret>,
        /// Its newest activity when it was read ([`RelayForSync::seen`]).
        seen: i64,
    },
    /// A relay the host deleted.
    Deleted {
        id: String,
        /// Its pending `delete_relay`'s `seq`.
        seen: i64,
    },
}

impl Target {
    fn id(&self) -> &str {
        match self {
            Target::Relay { relay, .. } => &relay.id,
            Target::Deleted { id, .. } => id,
        }
    }

    /// The relay's newest activity when it was read.
    fn seen(&self) -> i64 {
        match self {
            Target::Relay { seen, .. } | Target::Deleted { seen, .. } => *seen,
        }
    }
}

/// Why a move's deletion at the zooid it leaves did not happen.
enum Left {
    /// It failed; the relay's sync fails with this.
    Failed(SyncError),
    /// The worker stops: the next start moves it again.
    Stopping,
}

/// A successful exchange with zooid.
struct Done {
    method: &'static str,
    status: u16,
}

impl Syncer {
    /// The default zooid's syncer, with counters of its own (for `zooid-sync sync`); it
    /// knows every zooid (see [`for_zooid`](Self::for_zooid)).
    #[cfg(feature = "cli")]
    pub fn new(query: Query, command: Command, env: &Env) -> Result<Syncer> {
        let (back, _) = crossbeam_channel::unbounded();
        let mut syncers = Syncer::for_each_zooid(query, command, env, Arc::default(), back)?;
        Ok(syncers.swap_remove(0))
    }

    /// One syncer for each zooid `env` names, the default one first, sharing `metrics`;
    /// each zooid's breaker tells `back` its name when that zooid answers again.
    pub fn for_each_zooid(
        query: Query,
        command: Command,
        env: &Env,
        metrics: Arc<Metrics>,
        back: crossbeam_channel::Sender<String>,
    ) -> Result<Vec<Syncer>> {
        let zooids: Arc<[Arc<Zooid>]> = env
            .zooids()
            .into_iter()
            .map(|address| {
                let settings = env.for_zooid(&address.name).expect("a zooid env names");
                let zooid_metrics = metrics.zooid(&address.name);
                Ok(Arc::new(Zooid {
                    client: ZooidClient::new(&settings)?,
                    breaker: Arc::new(Breaker::new(
                        &address.name,
                        &env.retry,
                        command.clone(),
                        zooid_metrics.clone(),
                        back.clone(),
                    )),
                    metrics: zooid_metrics,
                    name: address.name,
                }))
            })
            .collect::<Result<Vec<_>>>()?
            .into();
        Ok(zooids
            .iter()
            .map(|own| Syncer {
                query: query.clone(),
                command: command.clone(),
                env: env.clone(),
                metrics: metrics.clone(),
                own: own.clone(),
                zooids: zooids.clone(),
                #[cfg(feature = "fixture")]
                injected: Arc::default(),
            })
            .collect())
    }

    /// This syncer for the zooid named `name` instead (`''`: the default one), if a
    /// setting names it.
    #[cfg(feature = "cli")]
    pub fn for_zooid(&self, name: &str) -> Option<Syncer> {
        Some(Syncer {
            own: self.zooid_named(name)?.clone(),
            ..self.clone()
        })
    }

    /// The zooid of this name (`''`: the default one), if a setting names it.
    fn zooid_named(&self, name: &str) -> Option<&Arc<Zooid>> {
        let name = crate::env::zooid_named_by(name);
        self.zooids.iter().find(|z| z.name == name)
    }

    /// The name of the zooid this syncer syncs to.
    pub fn zooid(&self) -> &str {
        &self.own.name
    }

    /// The zooid this syncer syncs to.
    pub fn own_zooid(&self) -> &Arc<Zooid> {
        &self.own
    }

    /// The store's writing half.
    pub(crate) fn command(&self) -> &Command {
        &self.command
    }

    /// The counters this syncer moves.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The circuit breaker of this syncer's zooid.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.own.breaker
    }

    /// The client every request to this syncer's zooid goes through (and its rate limit).
    pub fn client(&self) -> &ZooidClient {
        &self.own.client
    }

    /// Reads relay `id` afresh, syncs it and records the outcome before it returns; a relay
    /// that is gone is skipped. (`zooid-sync sync` in the foreground.)
    #[cfg(feature = "cli")]
    pub fn sync_relay_by_id(&self, id: &str) -> SyncOutcome {
        match self.sync_here(id) {
            SyncOutcome::LivesElsewhere(zooid) => match self.for_zooid(&zooid) {
                Some(there) => there.sync_here(id),
                None => SyncOutcome::LivesElsewhere(zooid),
            },
            outcome => outcome,
        }
    }

    /// [`sync_relay_by_id`](Self::sync_relay_by_id) at this syncer's zooid.
    #[cfg(feature = "cli")]
    fn sync_here(&self, id: &str) -> SyncOutcome {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send_then(self.prepare(id), move |outcome| {
            let _ = tx.send(outcome);
        });
        // Commits the outcome here, unless a writer thread took it first; either way the
        // callback has run or is about to.
        self.command.flush();
        rx.recv()
            .unwrap_or_else(|_| SyncOutcome::NotRecorded("the outcome was lost".into()))
    }

    /// The first half of a sync of relay `id`: reads it, decides create or update, builds its
    /// body and signs the request. Nothing is sent. The pool's preparer thread does this ahead,
    /// while the workers wait on zooid.
    ///
    /// A panic while preparing one relay (a bug that some host value trips) fails that relay,
    /// recorded and retried like any failure, instead of ending the one thread that prepares
    /// every relay.
    pub(crate) fn prepare(&self, id: &str) -> Prepared {
        contain_panic(id, "preparing", || self.prepare_unguarded(id))
    }

    fn prepare_unguarded(&self, id: &str) -> Prepared {
        let failed = |error| Prepared::failed(id, error);
        let RelayForSync {
            relay,
            ever_completed,
            seen,
            placed,
        } = match self.query.get_relay_for_sync(id) {
            Ok(Some(found)) => found,
            Ok(None) => return self.prepare_deletion(id),
            Err(e) => return failed(SyncError::Unreadable(format!("{e:#}"))),
        };
        let lives_at = match self.zooid_named(&relay.settings.zooid) {
            Some(zooid) if zooid.name == self.own.name => zooid.clone(),
            Some(zooid) => {
                let elsewhere = SyncOutcome::LivesElsewhere(zooid.name.clone());
                return Prepared(Stage::Decided(Attempt::Quiet(elsewhere)));
            }
            None => return failed(SyncError::UnknownZooid(relay.settings.zooid.clone())),
        };
        let is_new = !relay.synced && !ever_completed;
        // Where zooid has it now: where it was recorded, the default zooid for a relay synced
        // before any was, nowhere for a new one.
        let was_at = match (&placed, is_new) {
            (Some(placement), _) => Some(placement.zooid.as_str()),
            (None, false) => Some(crate::env::DEFAULT_ZOOID),
            (None, true) => None,
        };
        let moves = was_at.is_some_and(|name| name != lives_at.name);
        // The zooid it is to be deleted at once its own has it: the one it moves away from,
        // or the one a half-done move left it at.
        let leaving = match (was_at, &placed) {
            (Some(name), _) if moves => Some(name),
            (_, Some(p)) if !p.leaving.is_empty() && p.leaving != lives_at.name => {
                Some(p.leaving.as_str())
            }
            _ => None,
        };
        let leaving = match leaving.map(|name| (name, self.zooid_named(name))) {
            None => None,
            Some((_, Some(zooid))) => Some(zooid.clone()),
            Some((name, None)) => return failed(SyncError::UnknownZooid(name.to_string())),
        };
        // Recorded when it changes, and never for a fleet on the default zooid alone.
        let settled = Placement {
            zooid: lives_at.name.clone(),
            leaving: String::new(),
        };
        let placed = match placed {
            None if lives_at.name == crate::env::DEFAULT_ZOOID => None,
            Some(p) if p == settled => None,
            _ => Some(settled),
        };
        // Moving is creating at the new zooid, with a secret of its own.
        let method = match is_new || moves {
            true => "POST",
            false => "PATCH",
        };
        let mut secret = None;
        match self.sign(&relay, method, &mut secret) {
            Ok(first) => Prepared(Stage::Ready(Box::new(Ready {
                target: Target::Relay {
                    relay,
                    secret,
                    seen,
                },
                first,
                leaving,
                placed,
            }))),
            Err(error) => failed(error),
        }
    }

    /// A relay without a row: deleted at zooid if the host deleted it with a `delete_relay`
    /// that zooid has not confirmed; otherwise there is nothing to do. It is deleted where it
    /// lives (and where a half-done move left it), by that zooid's syncer.
    fn prepare_deletion(&self, id: &str) -> Prepared {
        let failed = |error| Prepared::failed(id, error);
        match self.query.deletion_pending(id) {
            Ok(Some(seen)) => {
                let placed = match self.query.relay_placement(id) {
                    Ok(placed) => placed,
                    Err(e) => return failed(SyncError::Unreadable(format!("{e:#}"))),
                };
                let lives_at = placed
                    .as_ref()
                    .map_or(crate::env::DEFAULT_ZOOID, |p| p.zooid.as_str());
                if lives_at != self.own.name {
                    let elsewhere = match self.zooid_named(lives_at) {
                        Some(_) => SyncOutcome::LivesElsewhere(lives_at.to_string()),
                        None => return failed(SyncError::UnknownZooid(lives_at.to_string())),
                    };
                    return Prepared(Stage::Decided(Attempt::Quiet(elsewhere)));
                }
                let leaving = match placed.as_ref().map(|p| p.leaving.as_str()) {
                    Some(name) if !name.is_empty() && name != lives_at => {
                        match self.zooid_named(name) {
                            Some(zooid) => Some(zooid.clone()),
                            None => return failed(SyncError::UnknownZooid(name.to_string())),
                        }
                    }
                    _ => None,
                };
                match self.own.client.sign_delete(id) {
                    Ok(first) => Prepared(Stage::Ready(Box::new(Ready {
                        target: Target::Deleted {
                            id: id.to_string(),
                            seen,
                        },
                        first,
                        leaving,
                        placed: None,
                    }))),
                    Err(e) => failed(SyncError::Refused(e)),
                }
            }
            Ok(None) => {
                log::debug!("relay {id}: gone, nothing to sync");
                Prepared(Stage::Decided(Attempt::Quiet(SyncOutcome::Gone)))
            }
            Err(e) => failed(SyncError::Unreadable(format!("{e:#}"))),
        }
    }

    /// The second half: sends a prepared sync (unless zooid is known to be down) and hands its
    /// outcome to the writer; `then` learns the outcome once it is recorded. The pool's
    /// workers return as soon as zooid answered, so that one relay's commit overlaps the
    /// next relay's request.
    pub(crate) fn send_then(
        &self,
        prepared: Prepared,
        then: impl FnOnce(SyncOutcome) + Send + 'static,
    ) {
        let attempt = match prepared {
            Prepared(Stage::Ready(ready)) => {
                let id = ready.target.id().to_string();
                let attempt = contain_panic(&id, "sending", || {
                    Prepared(Stage::Decided(self.attempt(*ready)))
                });
                match attempt {
                    Prepared(Stage::Decided(attempt)) => attempt,
                    Prepared(Stage::Ready(_)) => unreachable!("an attempt is decided"),
                }
            }
            Prepared(Stage::Decided(attempt)) => attempt,
        };
        self.record_then(attempt, then)
    }

    /// Hands an attempt's outcome to the writer; `then` learns the outcome once it is
    /// recorded.
    fn record_then(&self, attempt: Attempt, then: impl FnOnce(SyncOutcome) + Send + 'static) {
        let metrics = self.own.metrics.clone();
        match attempt {
            Attempt::Accepted {
                relay_id,
                placed,
                revision,
                seen,
                done,
                started,
            } => self.command.complete_relay_sync_then(
                &relay_id.clone(),
                revision,
                seen,
                placed,
                move |result| {
                    then(recorded_success(
                        &metrics, &relay_id, revision, done, started, result,
                    ))
                },
            ),
            Attempt::Deleted {
                relay_id,
                done,
                started,
            } => {
                let detail = match done.status {
                    404 => "DELETE 404: zooid did not have it",
                    _ => "DELETE: deleted at zooid",
                };
                self.command
                    .record_deletion_then(&relay_id.clone(), detail, move |result| {
                        then(recorded_deletion(
                            &metrics, &relay_id, done, started, result,
                        ))
                    })
            }
            Attempt::Failed {
                relay_id,
                error,
                started,
                seen,
                placed,
            } => {
                let text = self.failure_text(&relay_id, &error, started);
                self.command.fail_relay_sync_then(
                    &relay_id.clone(),
                    &text,
                    seen,
                    placed,
                    move |result| then(recorded_failure(&relay_id, error, result)),
                )
            }
            Attempt::Quiet(outcome) => then(outcome),
        }
    }

    /// Sends a prepared relay to zooid, unless zooid is known to be down; nothing is
    /// recorded yet.
    fn attempt(&self, ready: Ready) -> Attempt {
        let relay_id = ready.target.id().to_string();
        let seen = Some(ready.target.seen());
        if let Some((since, last_error)) = self.own.breaker.outage() {
            return match self.own.breaker.tell(&relay_id) {
                true => Attempt::Failed {
                    error: SyncError::ZooidUnavailable(format!(
                        "since {} ({last_error}); the relay is synced when zooid answers again",
                        format_unix(since)
                    )),
                    relay_id,
                    started: Instant::now(),
                    seen,
                    placed: None,
                },
                false => {
                    log::debug!("relay {relay_id}: waiting for zooid");
                    Attempt::Quiet(SyncOutcome::Parked)
                }
            };
        }
        let started = Instant::now();
        let read = match &ready.target {
            Target::Relay { relay, seen, .. } => Some((relay.revision, *seen)),
            Target::Deleted { .. } => None,
        };
        let (leaving, placed) = (ready.leaving.clone(), ready.placed.clone());
        // A relay zooid will serve to its users: one to ask as their user, if none is known.
        let served = match &ready.target {
            Target::Relay { relay, .. }
                if relay.settings.status == RelayStatus::Active
                    && !self.own.client.pacer().knows_served() =>
            {
                Some(format!(
                    "{}.{}",
                    relay.settings.subdomain, self.env.relay_domain
                ))
            }
            _ => None,
        };
        let error = match self.exchange(ready) {
            Ok(done) => {
                self.own.breaker.answered();
                if let Some(host) = served {
                    self.own.client.pacer().served(&host);
                }
                // A move is done once the zooid it leaves no longer has it.
                if let Some(old) = leaving {
                    match self.leave(&old, &relay_id) {
                        Ok(()) => {}
                        Err(Left::Failed(error)) => {
                            // Its own zooid has it, the one it leaves still does: the next
                            // sync (or its deletion) deletes it there.
                            let placed = match read {
                                Some(_) => Placement {
                                    zooid: self.own.name.clone(),
                                    leaving: old.name.clone(),
                                },
                                // Deleted here, it lives at the other alone.
                                None => Placement {
                                    zooid: old.name.clone(),
                                    leaving: String::new(),
                                },
                            };
                            return Attempt::Failed {
                                relay_id,
                                error,
                                started,
                                seen,
                                placed: Some(placed),
                            };
                        }
                        Err(Left::Stopping) => {
                            return Attempt::Quiet(SyncOutcome::Interrupted);
                        }
                    }
                }
                return match read {
                    Some((revision, seen)) => Attempt::Accepted {
                        relay_id,
                        placed,
                        revision,
                        seen,
                        done,
                        started,
                    },
                    None => Attempt::Deleted {
                        relay_id,
                        done,
                        started,
                    },
                };
            }
            Err(SyncError::Refused(e)) if fleet_wide(&self.own.client, &e).is_some() => {
                let failure = fleet_wide(&self.own.client, &e).expect("matched above");
                match self
                    .own
                    .breaker
                    .verdict(&self.own.client, started, &failure)
                {
                    // zooid answers cheap requests but not this write in time: it is slow,
                    // not refusing. The timeout is this write's cost to the pacer.
                    Verdict::ZooidUp if e.timed_out() => {
                        self.own
                            .client
                            .pacer()
                            .observe(true, self.env.zooid_timeout, true);
                        log::warn!(
                            "relay {relay_id}: zooid did not answer the write within \
                             ZOOID_TIMEOUT while it answers other requests: it is slow. Sent \
                             again later, not counted as a failure; catch-ups slow down"
                        );
                        return Attempt::Quiet(SyncOutcome::Slow);
                    }
                    Verdict::ZooidUp => SyncError::Refused(e),
                    Verdict::ZooidDown => {
                        self.own.breaker.tell(&relay_id);
                        // zooid's state as the breaker found it says more than this request.
                        let state = self.own.breaker.outage().map(|(_, state)| state);
                        SyncError::ZooidUnavailable(state.unwrap_or_else(|| e.to_string()))
                    }
                    Verdict::Stopping => {
                        // Whether zooid got it or not, the relay stays pending as it was:
                        // the next start syncs it.
                        log::info!(
                            "relay {relay_id}: stopping before zooid answered ({e}); it is \
                             synced at the next start"
                        );
                        return Attempt::Quiet(SyncOutcome::Interrupted);
                    }
                }
            }
            Err(error) => {
                if matches!(error, SyncError::Refused(_)) {
                    self.own.breaker.answered();
                }
                error
            }
        };
        Attempt::Failed {
            relay_id,
            error,
            started,
            seen,
            placed: None,
        }
    }

    /// The second half of a move: deletes relay `id` at the zooid it moves away from, `old`
    /// (`404`: it was gone already). A failure that is `old`'s as a whole is judged by
    /// `old`'s breaker, and while that breaker is open nothing is sent: the relay then waits
    /// for `old` to answer, uncounted.
    fn leave(&self, old: &Zooid, id: &str) -> Result<(), Left> {
        let unavailable = |why: &dyn std::fmt::Display| {
            Left::Failed(SyncError::ZooidUnavailable(format!(
                "the relay moves from zooid {} to zooid {}, and zooid {} is unavailable \
                 ({why}); it is moved when zooid {} answers again",
                old.name, self.own.name, old.name, old.name
            )))
        };
        if let Some((_, last_error)) = old.breaker.outage() {
            return Err(unavailable(&last_error));
        }
        let started = Instant::now();
        let error = match old.client.sign_delete(id) {
            Ok(signed) => {
                let _request = old.metrics.request();
                match old.client.send(signed) {
                    Ok(_) => return Ok(()),
                    Err(e) if e.status() == Some(404) && old.client.robot_refusal(&e).is_none() => {
                        return Ok(())
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        let failure = fleet_wide(&old.client, &error);
        let moving = format!(
            "relay {id}: moving from zooid {} to zooid {}: created at the second, and the \
             first's DELETE failed",
            old.name, self.own.name
        );
        let verdict = match &failure {
            None => {
                old.breaker.answered();
                Verdict::ZooidUp
            }
            Some(failure) => old.breaker.verdict(&old.client, started, failure),
        };
        match verdict {
            Verdict::ZooidUp => {
                log::warn!("{moving}: {error}");
                Err(Left::Failed(SyncError::Refused(error)))
            }
            Verdict::ZooidDown => Err(unavailable(&error)),
            Verdict::Stopping => Err(Left::Stopping),
        }
    }

    /// The text a failure is recorded with; counts and logs it.
    fn failure_text(&self, id: &str, error: &SyncError, started: Instant) -> String {
        // The error may quote zooid and the host; both were cleaned where quoted, and this
        // bounds what is logged and stored whatever composed it.
        let text = quote::remote(&error.to_string(), 2 * quote::REMOTE_MAX);
        self.own.metrics.failed();
        let ms = started.elapsed().as_millis();
        if error.counts() {
            log::warn!("relay {id}: sync failed after {ms} ms: {text}");
        } else {
            // The breaker logs the outage once; one line per relay would drown it.
            log::debug!("relay {id}: {text}");
        }
        text
    }

    /// Builds the relay's body and signs `method` (`POST` or `PATCH`) of it. A `POST` carries
    /// a secret, generated into `secret` the first time one is sent.
    fn sign(
        &self,
        relay: &Relay,
        method: &'static str,
        secret: &mut Option<Secret>,
    ) -> Result<SignedRequest, SyncError> {
        let secret = match method {
            "POST" => Some(&*secret.get_or_insert_with(|| Secret::generate(32))),
            _ => None,
        };
        let body = relay_body(relay, &self.env, secret).map_err(SyncError::Invalid)?;
        self.own
            .client
            .sign_relay(method, &relay.id, &body)
            .map_err(SyncError::Refused)
    }

    /// Sends the prepared request, and heals the two answers that have a fallback: `POST` →
    /// 409 updates with `PATCH`, `PATCH` → 404 creates again with `POST`. A `DELETE` that
    /// zooid answers with its own `404` found the relay gone already: done.
    fn exchange(&self, ready: Ready) -> Result<Done, SyncError> {
        #[cfg(feature = "fixture")]
        self.injected.maybe_panic(ready.target.id());
        let (relay, mut secret) = match ready.target {
            Target::Relay { relay, secret, .. } => (relay, secret),
            Target::Deleted { .. } => {
                let _request = self.own.metrics.request();
                return match self.own.client.send(ready.first) {
                    Ok(response) => Ok(Done {
                        method: "DELETE",
                        status: response.status,
                    }),
                    Err(e)
                        if e.status() == Some(404)
                            && self.own.client.robot_refusal(&e).is_none() =>
                    {
                        Ok(Done {
                            method: "DELETE",
                            status: 404,
                        })
                    }
                    Err(e) => Err(SyncError::Refused(e)),
                };
            }
        };
        let send = |signed: SignedRequest| -> Result<Done, ZooidError> {
            let method = signed.method();
            let _request = self.own.metrics.request();
            let response = self.own.client.send(signed)?;
            Ok(Done {
                method,
                status: response.status,
            })
        };
        let (fallback, heal_on, why) = match ready.first.method() {
            "POST" => (
                "PATCH",
                409,
                "POST answered 409 (it exists at zooid), PATCH succeeded",
            ),
            _ => (
                "POST",
                404,
                "PATCH answered 404 (zooid lost it), created again with a new secret: its \
                 identity at zooid changed",
            ),
        };
        match send(ready.first) {
            // A plain 404 from a host name that is not zooid's API is no lost relay.
            Err(original)
                if original.status() == Some(heal_on)
                    && self.own.client.robot_refusal(&original).is_none() =>
            {
                // When the fallback fails too, the original error is the one reported.
                let healed = self
                    .sign(&relay, fallback, &mut secret)
                    .ok()
                    .and_then(|signed| send(signed).ok());
                match healed {
                    Some(done) => {
                        log::warn!("relay {}: healed: {why}", relay.id);
                        Ok(done)
                    }
                    None => Err(SyncError::Refused(original)),
                }
            }
            other => other.map_err(SyncError::Refused),
        }
    }

    /// Records `outcome` as the answer to manual sync request `request`, through the writer
    /// thread, which writes it again until the database takes it.
    pub fn answer(&self, request: i64, outcome: &SyncOutcome) {
        let (kind, detail) = outcome.answer();
        let detail = quote::remote(&detail, 2 * quote::REMOTE_MAX);
        self.command
            .answer_sync_request_later(request, kind, &detail);
    }
}

/// What `error` from the zooid behind `client` says about that zooid as a whole, if anything:
/// it is unavailable, or it refuses this robot. Such a failure is that zooid's breaker's to
/// judge, not the relay's.
fn fleet_wide(client: &ZooidClient, error: &ZooidError) -> Option<ProbeFailure> {
    if error.is_unavailable() {
        return Some(ProbeFailure::Unavailable(error.clone()));
    }
    client.robot_refusal(error).map(ProbeFailure::RobotRefused)
}

/// Runs one half of a sync (`doing` says which); a panic in it becomes a failed sync of relay
/// `id` that names the bug, recorded and retried like any failure, instead of ending the
/// thread that syncs every relay.
fn contain_panic(id: &str, doing: &str, half: impl FnOnce() -> Prepared) -> Prepared {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(half)).unwrap_or_else(|panic| {
        let what = crate::liveness::panic_message(panic.as_ref());
        log::error!("relay {id}: {doing} the sync panicked (a bug in zooid-sync): {what}");
        Prepared::failed(
            id,
            SyncError::Bug(format!(
                "{doing} the sync failed unexpectedly (a bug in zooid-sync; please report \
                 it): {}",
                quote::remote(&what, quote::REMOTE_MAX)
            )),
        )
    })
}

/// Counts and logs a success once its recording is done.
fn recorded_success(
    metrics: &ZooidMetrics,
    relay_id: &str,
    revision: i64,
    done: Done,
    started: Instant,
    recorded: Result<Option<bool>>,
) -> SyncOutcome {
    let ms = started.elapsed().as_millis();
    match recorded {
        Ok(None) => {
            log::info!(
                "relay {relay_id}: {} {} in {ms} ms, but the relay was deleted meanwhile; \
                 nothing recorded",
                done.method,
                done.status
            );
            SyncOutcome::Gone
        }
        Ok(Some(marked)) => {
            metrics.synced();
            log::info!(
                "relay {relay_id}: {} {} in {ms} ms (revision {revision}{})",
                done.method,
                done.status,
                if marked {
                    ""
                } else {
                    ", changed meanwhile: stays pending"
                }
            );
            SyncOutcome::Synced {
                method: done.method,
                status: done.status,
                marked,
            }
        }
        Err(e) => {
            log::error!(
                "relay {relay_id}: zooid accepted {} but recording it failed: {e:#}",
                done.method
            );
            SyncOutcome::NotRecorded(format!("{e:#}"))
        }
    }
}

/// Counts and logs a deletion once its recording is done.
fn recorded_deletion(
    metrics: &ZooidMetrics,
    relay_id: &str,
    done: Done,
    started: Instant,
    recorded: Result<bool>,
) -> SyncOutcome {
    let ms = started.elapsed().as_millis();
    let how = match done.status {
        404 => "zooid did not have it",
        _ => "deleted at zooid",
    };
    match recorded {
        Ok(recorded) => {
            metrics.synced();
            log::info!(
                "relay {relay_id}: DELETE {} in {ms} ms: {how}{}",
                done.status,
                match recorded {
                    true => "",
                    false => "; it was created again meanwhile and is synced next",
                }
            );
            SyncOutcome::Synced {
                method: done.method,
                status: done.status,
                marked: recorded,
            }
        }
        Err(e) => {
            log::error!("relay {relay_id}: zooid deleted it but recording that failed: {e:#}");
            SyncOutcome::NotRecorded(format!("{e:#}"))
        }
    }
}

/// Answers a failure once its recording is done.
fn recorded_failure(id: &str, error: SyncError, recorded: Result<bool>) -> SyncOutcome {
    match recorded {
        Ok(true) => SyncOutcome::Failed(error),
        Ok(false) => {
            log::info!("relay {id}: deleted while its sync was in flight; nothing recorded");
            SyncOutcome::Gone
        }
        Err(e) => {
            log::error!("relay {id}: recording the failed sync failed: {e:#}");
            SyncOutcome::NotRecorded(format!("{e:#}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_preparing_fails_that_relay_only() {
        let prepared = contain_panic("alpha", "preparing", || {
            panic!("index out of bounds: {}", 7)
        });
        match prepared {
            Prepared(Stage::Decided(Attempt::Failed {
                relay_id, error, ..
            })) => {
                assert_eq!(relay_id, "alpha");
                assert!(
                    error.counts(),
                    "it counts toward giving up, like any failure"
                );
                let text = error.to_string();
                assert!(text.starts_with("preparing the sync"), "{text}");
                assert!(text.contains("a bug in zooid-sync"), "{text}");
                assert!(text.contains("index out of bounds: 7"), "{text}");
            }
            _ => panic!("a panic must become a failed sync"),
        }
        // Without a panic the answer passes through.
        let gone = contain_panic("beta", "sending", || {
            Prepared(Stage::Decided(Attempt::Quiet(SyncOutcome::Gone)))
        });
        assert!(matches!(
            gone,
            Prepared(Stage::Decided(Attempt::Quiet(SyncOutcome::Gone)))
        ));
    }
}
