//! One relay's sync: read it, decide create or update, talk to zooid, heal, record.
//!
//! [`Syncer`] holds what a sync needs (the store, the zooid client, the settings) and is shared
//! by every pool thread and by `zooid-sync sync <id>`. It does not know about threads or
//! retries: it answers a [`SyncOutcome`] and the caller decides what comes next.
//!
//! A relay is *new* when it never completed a sync (`synced != 1` and no
//! `complete_relay_sync` activity): it is created with `POST` and a fresh secret. Any other
//! relay is updated with `PATCH` and no secret. Two answers are healed, each logged at `warn`:
//! `POST` → `409` because the id exists (a create that was never recorded) switches to `PATCH`;
//! `PATCH` → `404` (zooid lost the relay) creates it again with `POST` and a new secret. When
//! the fallback fails too, the original error is the one reported, so a schema or host conflict
//! stays a failure.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use crate::env::Env;
use crate::metrics::Metrics;
use crate::quote;
use crate::relay_config::relay_body;
use crate::secret::Secret;
use crate::store::{Command, Query, Relay};
use crate::zooid::{ZooidClient, ZooidError};

/// How a sync ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// zooid accepted the relay; the outcome is recorded.
    Synced {
        method: &'static str,
        status: u16,
        /// Whether the relay is now marked synced (false when it changed meanwhile).
        marked: bool,
    },
    /// The sync failed; the error is recorded as `fail_relay_sync`.
    Failed(String),
    /// The relay no longer exists; nothing was sent or recorded.
    Gone,
    /// The outcome could not be written to the database (it stays pending there).
    NotRecorded(String),
}

/// Syncs relays to zooid and records the outcomes.
#[derive(Debug, Clone)]
pub struct Syncer {
    query: Query,
    command: Command,
    client: ZooidClient,
    env: Env,
    metrics: Arc<Metrics>,
}

/// A successful exchange with zooid.
struct Done {
    method: &'static str,
    status: u16,
}

impl Syncer {
    pub fn new(query: Query, command: Command, env: &Env) -> Result<Syncer> {
        Ok(Syncer {
            client: ZooidClient::new(env)?,
            query,
            command,
            env: env.clone(),
            metrics: Arc::default(),
        })
    }

    /// Counts outcomes and requests in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Syncer {
        self.metrics = metrics;
        self
    }

    /// Reads relay `id` afresh and syncs it; a relay that is gone is skipped.
    pub fn sync_relay_by_id(&self, id: &str) -> SyncOutcome {
        match self.query.get_relay_for_sync(id) {
            Ok(Some((relay, ever_completed))) => self.sync(&relay, Some(ever_completed)),
            Ok(None) => {
                log::debug!("relay {id}: gone, nothing to sync");
                SyncOutcome::Gone
            }
            Err(e) => self.record_failure(id, &format!("{e:#}"), Instant::now()),
        }
    }

    /// Syncs `relay` and records the outcome.
    pub fn sync_relay(&self, relay: &Relay) -> SyncOutcome {
        self.sync(relay, None)
    }

    /// `ever_completed`: whether the relay ever completed a sync, when already known.
    fn sync(&self, relay: &Relay, ever_completed: Option<bool>) -> SyncOutcome {
        let started = Instant::now();
        match self.try_sync_relay(relay, ever_completed) {
            Ok(done) => {
                let ms = started.elapsed().as_millis();
                match self.command.complete_relay_sync(&relay.id, relay.revision) {
                    Ok(marked) => {
                        self.metrics.synced();
                        log::info!(
                            "relay {}: {} {} in {ms} ms (revision {}{})",
                            relay.id,
                            done.method,
                            done.status,
                            relay.revision,
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
                            "relay {}: zooid accepted {} but recording it failed: {e:#}",
                            relay.id,
                            done.method
                        );
                        SyncOutcome::NotRecorded(format!("{e:#}"))
                    }
                }
            }
            Err(error) => self.record_failure(&relay.id, &error, started),
        }
    }

    fn record_failure(&self, id: &str, error: &str, started: Instant) -> SyncOutcome {
        // The error may quote zooid and the host; both were cleaned where quoted, and this
        // bounds what is logged and stored whatever composed it.
        let error = &quote::remote(error, 2 * quote::REMOTE_MAX);
        self.metrics.failed();
        log::warn!(
            "relay {id}: sync failed after {} ms: {error}",
            started.elapsed().as_millis()
        );
        match self.command.fail_relay_sync(id, error) {
            Ok(()) => SyncOutcome::Failed(error.to_string()),
            Err(e) => {
                log::error!("relay {id}: recording the failed sync failed: {e:#}");
                SyncOutcome::NotRecorded(format!("{e:#}"))
            }
        }
    }

    /// Sends the relay to zooid: create or update, with healing. The error is the text to
    /// record.
    fn try_sync_relay(&self, relay: &Relay, ever_completed: Option<bool>) -> Result<Done, String> {
        let ever_completed = match ever_completed {
            Some(known) => known,
            None if relay.synced => true,
            None => self
                .query
                .has_completed_sync(&relay.id)
                .map_err(|e| format!("{e:#}"))?,
        };
        let is_new = !relay.synced && !ever_completed;
        // Only a POST carries it; generated now so that the body below can borrow it.
        let secret = Secret::generate(32);
        // Builds and validates the body before anything is sent.
        let mut body = relay_body(relay, &self.env, None).map_err(|e| e.to_string())?;
        let mut send = |method: &'static str| -> Result<Done, ZooidError> {
            body.secret = (method == "POST").then_some(&secret);
            let _request = self.metrics.request();
            let response = match method {
                "POST" => self.client.create_relay(&relay.id, &body),
                _ => self.client.patch_relay(&relay.id, &body),
            }?;
            Ok(Done {
                method,
                status: response.status,
            })
        };
        let (first, fallback, heal_on, why) = if is_new {
            (
                "POST",
                "PATCH",
                409,
                "POST answered 409 (it exists at zooid), PATCH succeeded",
            )
        } else {
            (
                "PATCH",
                "POST",
                404,
                "PATCH answered 404 (zooid lost it), created again with a new secret",
            )
        };
        match send(first) {
            Err(original) if original.status() == Some(heal_on) => match send(fallback) {
                Ok(done) => {
                    log::warn!("relay {}: healed: {why}", relay.id);
                    Ok(done)
                }
                Err(_) => Err(original.to_string()),
            },
            other => other.map_err(|e| e.to_string()),
        }
    }

    /// `GET /relay/{id}/members` from zooid.
    pub fn list_relay_members(&self, id: &str) -> Result<Vec<String>> {
        self.client.list_relay_members(id)
    }
}
