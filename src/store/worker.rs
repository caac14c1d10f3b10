//! The worker's writes on [`Command`]: sync outcomes (each answered once it is committed),
//! the recorded zooid outage, manual sync requests and their answers, the worker's settings
//! and state, pruning; and the one transaction helper for its own writes outside the group
//! commits.

use super::*;

impl Command {
    /// Records a sync zooid accepted. The relay is marked synced only if its revision is still
    /// `revision`, the one the sync read: a change that landed meanwhile stays pending.
    /// Answers whether the relay is now marked synced (not when it was deleted meanwhile:
    /// then nothing is recorded).
    #[doc(hidden)]
    pub fn complete_relay_sync(&self, relay_id: &str, revision: i64) -> Result<bool> {
        let applied = self.write(Write::Complete {
            relay_id: relay_id.to_string(),
            revision,
            seen: None,
            placed: None,
        })?;
        Ok(applied.changed)
    }

    /// [`complete_relay_sync`](Self::complete_relay_sync) through the writer thread: returns
    /// at once, `then` learns whether the relay is now marked synced, or `None` when it was
    /// deleted while its sync was in flight (nothing is recorded then, even if the host
    /// created it again: `seen` is the relay's newest activity when the sync read it).
    /// `placed` is the zooid the relay now lives at, when that is to be recorded (it moved, or
    /// lives at a zooid other than the default one for the first time).
    pub(crate) fn complete_relay_sync_then(
        &self,
        relay_id: &str,
        revision: i64,
        seen: i64,
        placed: Option<Placement>,
        then: impl FnOnce(Result<Option<bool>>) + Send + 'static,
    ) {
        let write = Write::Complete {
            relay_id: relay_id.to_string(),
            revision,
            seen: Some(seen),
            placed,
        };
        self.write_then(write, move |result| {
            then(result.map(|a| a.activity.is_some().then_some(a.changed)))
        });
    }

    /// Records, through the writer thread, that zooid no longer has relay `relay_id`, whose
    /// deletion the host asked for (`detail` says how zooid answered). `then` learns whether
    /// it was recorded: not when the relay was created again meanwhile.
    pub(crate) fn record_deletion_then(
        &self,
        relay_id: &str,
        detail: &str,
        then: impl FnOnce(Result<bool>) + Send + 'static,
    ) {
        let write = Write::Deleted {
            relay_id: relay_id.to_string(),
            detail: detail.to_string(),
        };
        self.write_then(write, move |result| {
            then(result.map(|a| a.activity.is_some()))
        });
    }

    /// Marks a synced relay pending again because zooid no longer has it (the existence
    /// audit found it gone); answers whether it was marked (not when it changed meanwhile or
    /// is gone: then its own sync or deletion follows anyway).
    pub(crate) fn mark_lost(&self, relay_id: &str) -> Result<bool> {
        Ok(self
            .write(Write::Lost {
                relay_id: relay_id.to_string(),
            })?
            .changed)
    }

    /// [`fail_relay_sync`](Self::fail_relay_sync) through the writer thread; `then` learns
    /// whether it was recorded: not when the relay was deleted meanwhile, nor when it was
    /// deleted or created again after `seen`, its newest activity when the sync read it.
    pub(crate) fn fail_relay_sync_then(
        &self,
        relay_id: &str,
        error: &str,
        seen: Option<i64>,
        placed: Option<Placement>,
        then: impl FnOnce(Result<bool>) + Send + 'static,
    ) {
        let error = if error.is_empty() {
            "unknown error"
        } else {
            error
        };
        let write = Write::Fail {
            relay_id: relay_id.to_string(),
            error: error.to_string(),
            seen,
            placed,
        };
        self.write_then(write, move |result| {
            then(result.map(|a| a.activity.is_some()))
        });
    }

    /// Records a failed sync with its error.
    #[doc(hidden)]
    pub fn fail_relay_sync(&self, relay_id: &str, error: &str) -> Result<()> {
        let error = if error.is_empty() {
            "unknown error"
        } else {
            error
        };
        self.write(Write::Fail {
            relay_id: relay_id.to_string(),
            error: error.to_string(),
            seen: None,
            placed: None,
        })?;
        Ok(())
    }

    /// Records that the zooid named `zooid` has been unavailable since `since` (unix
    /// seconds), or updates the last error of its outage already recorded (keeping its start).
    #[doc(hidden)]
    pub fn record_zooid_outage(&self, zooid: &str, since: i64, last_error: &str) -> Result<()> {
        self.write_state(
            "INSERT INTO zooid_outage (zooid, since, last_error) VALUES (?1, ?2, ?3)
             ON CONFLICT (zooid) DO UPDATE SET last_error = excluded.last_error",
            params![zooid, since, last_error],
        )
        .with_context(|| format!("recording the outage of zooid {zooid}"))
    }

    /// Records that the zooid named `zooid` answers again.
    #[doc(hidden)]
    pub fn clear_zooid_outage(&self, zooid: &str) -> Result<()> {
        self.write_state("DELETE FROM zooid_outage WHERE zooid = ?1", [zooid])
            .with_context(|| format!("clearing the outage of zooid {zooid}"))
    }

    /// Hands manual syncs of `relay_ids` to the worker holding the lease; answers the request
    /// ids, in order.
    #[doc(hidden)]
    pub fn request_syncs(&self, relay_ids: &[String]) -> Result<Vec<i64>> {
        self.transaction(|conn| {
            let now = now_unix();
            // Housekeeping: answers nobody waited for (a `sync` that was interrupted) are
            // kept for a day, for whoever wants to look, then go.
            conn.prepare_cached(
                "DELETE FROM sync_request WHERE outcome IS NOT NULL AND requested_at < ?1",
            )?
            .execute([now - 86_400])?;
            let mut stmt = conn.prepare_cached(
                "INSERT INTO sync_request (relay_id, requested_at) VALUES (?1, ?2)",
            )?;
            relay_ids
                .iter()
                .map(|relay| {
                    stmt.execute(params![relay, now])?;
                    Ok(conn.last_insert_rowid())
                })
                .collect()
        })
        .context("handing manual syncs to the worker")
    }

    /// Forgets the manual sync requests `first..=last`, once their answers were read.
    #[doc(hidden)]
    pub fn forget_sync_requests(&self, first: i64, last: i64) -> Result<()> {
        self.write_state(
            "DELETE FROM sync_request WHERE id BETWEEN ?1 AND ?2",
            params![first, last],
        )
        .context("forgetting manual sync requests")
    }

    /// Answers a manual sync request: `outcome` is `synced`, `failed`, `invalid` or
    /// `unknown`.
    #[doc(hidden)]
    pub fn answer_sync_request(&self, request: i64, outcome: &str, detail: &str) -> Result<()> {
        self.write(Write::Answer {
            request,
            outcome: outcome.to_string(),
            detail: detail.to_string(),
        })
        .map(|_| ())
    }

    /// [`answer_sync_request`](Self::answer_sync_request) through the writer thread, which
    /// writes it again until it is recorded: a `sync` waiting for it always gets its answer.
    pub(crate) fn answer_sync_request_later(&self, request: i64, outcome: &str, detail: &str) {
        let write = Write::Answer {
            request,
            outcome: outcome.to_string(),
            detail: detail.to_string(),
        };
        self.write_then(write, move |result| {
            if let Err(e) = result {
                log::error!("manual sync request {request}: {e:#}");
            }
        });
    }

    /// Records the settings the worker runs with (`name`, `value`), replacing what an earlier
    /// worker recorded (see [`Query::worker_settings`]).
    pub(crate) fn record_worker_settings(&self, settings: &[(&str, String)]) -> Result<()> {
        self.transaction(|conn| {
            // The audit's place in its pass outlives a restart; everything else is replaced.
            conn.execute(
                r"DELETE FROM worker_settings WHERE name NOT LIKE 'audit\_%' ESCAPE '\'",
                [],
            )?;
            let mut stmt =
                conn.prepare_cached("INSERT INTO worker_settings (name, value) VALUES (?1, ?2)")?;
            for (name, value) in settings {
                stmt.execute(params![name, value])?;
            }
            Ok(())
        })
        .context("recording the worker's settings")
    }

    /// Records pieces of the worker's state beside its settings (`Some`), or forgets them
    /// (`None`), in one transaction: what `status` shows of a catch-up in progress.
    pub(crate) fn record_worker_state(&self, state: &[(&str, Option<String>)]) -> Result<()> {
        self.transaction(|conn| {
            for (name, value) in state {
                match value {
                    Some(value) => conn.execute(
                        "INSERT INTO worker_settings (name, value) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        params![name, value],
                    )?,
                    None => conn.execute("DELETE FROM worker_settings WHERE name = ?1", [name])?,
                };
            }
            Ok(())
        })
        .context("recording the worker's state")
    }

    /// Deletes the activity rows with `seq` in `after + 1 ..= through` that were written
    /// before `cutoff` (unix seconds) and that zooid-sync no longer needs, in one short write
    /// transaction; answers how many went. What is kept, whatever its age:
    ///
    /// - each relay's last `complete_relay_sync` (it decides `POST` or `PATCH`), and every
    ///   activity of the relay after it (its trailing failures: attempts, backoff, give-up);
    /// - every activity of a relay that waits for a sync (`synced = 0`), so that no change the
    ///   feed may not have read yet goes;
    /// - every activity of a relay that never completed a sync.
    ///
    /// Rows about other kinds of resource are the host's; zooid-sync needs none of them, and
    /// they go by age alone.
    #[doc(hidden)]
    pub fn prune_activity(&self, after: i64, through: i64, cutoff: i64) -> Result<usize> {
        self.transaction(|conn| {
            conn.prepare_cached(
                "DELETE FROM activity WHERE seq IN (
                   SELECT a.seq FROM activity a
                   WHERE a.seq > ?1 AND a.seq <= ?2 AND a.created_at < ?3
                     AND (a.resource_type != 'relay' OR (
                       EXISTS (SELECT 1 FROM activity c
                               WHERE c.resource_type = 'relay'
                                 AND c.resource_id = a.resource_id
                                 AND c.seq > a.seq
                                 AND c.activity_type = 'complete_relay_sync')
                       AND NOT EXISTS (SELECT 1 FROM relay r
                                       WHERE r.id = a.resource_id AND r.synced = 0))))",
            )?
            .execute(params![after, through, cutoff])
        })
        .context("pruning old activity")
    }

    /// One statement on zooid-sync's own state, which announces nothing on the bus: run on
    /// the writer connection in its own transaction, between group commits.
    fn write_state(&self, sql: &str, params: impl rusqlite::Params) -> Result<()> {
        self.transaction(|conn| conn.execute(sql, params).map(|_| ()))
    }

    /// Runs `f` on the writer connection in one `BEGIN IMMEDIATE` transaction, between group
    /// commits: committed when it succeeds, rolled back when it fails.
    fn transaction<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self
            .db
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&conn) {
            Ok(value) => {
                conn.execute_batch("COMMIT")?;
                Ok(value)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e.into())
            }
        }
    }
}
