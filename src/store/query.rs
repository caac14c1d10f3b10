//! [`Query`], the reading half: what the worker, the commands and a host read, each on a
//! pooled read connection; every row read checks its columns and names a bad one.

use super::*;

/// The answer to a manual sync request (`zooid-sync sync`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAnswer {
    /// The request's id in `sync_request`.
    pub request: i64,
    /// The relay it asked to sync.
    pub relay: String,
    /// `synced`, `failed`, `invalid` (the relay cannot be sent as it is) or `unknown`.
    pub outcome: String,
    /// What the worker said.
    pub detail: String,
}

/// A relay waiting for a sync (`synced = 0`), with the error of its last failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRelay {
    /// The relay's id.
    pub id: String,
    /// The error of its last failed attempt; empty if none failed since its last change.
    pub sync_error: String,
}

impl PendingRelay {
    fn from_row(row: &rusqlite::Row) -> Result<PendingRelay, BadRow> {
        use rusqlite::types::ValueRef;
        let rowid: i64 = row.get(0).unwrap_or(-1);
        let bad = |error: String| BadRow {
            table: "relay",
            key: rowid,
            error,
        };
        let text = |i: usize, name: &str| -> Result<String, BadRow> {
            match row.get_ref(i) {
                Ok(ValueRef::Text(t)) => String::from_utf8(t.to_vec())
                    .map_err(|_| bad(format!("column {name} is not valid UTF-8"))),
                Ok(ValueRef::Null) if name == "sync_error" => Ok(String::new()),
                Ok(_) => Err(bad(format!("column {name} does not hold text"))),
                Err(e) => Err(bad(format!("column {name}: {e}"))),
            }
        };
        Ok(PendingRelay {
            id: text(1, "id")?,
            sync_error: text(2, "sync_error")?,
        })
    }
}

/// A relay as a sync reads it ([`Query::get_relay_for_sync`]).
#[derive(Debug, Clone)]
pub struct RelayForSync {
    /// The relay's row.
    pub relay: Relay,
    /// Whether it completed a sync since it was last created: updated, not created, at zooid.
    pub ever_completed: bool,
    /// The newest `seq` of its activity when it was read. A `delete_relay` after it means the
    /// relay this sync read was deleted, whatever row holds its id now.
    pub seen: i64,
    /// Where it lives at zooid, when recorded (`relay_placement`).
    pub placed: Option<Placement>,
}

/// Where a relay lives at zooid (`relay_placement`): the zooid that accepted it last, and
/// while a move is half done, the zooid it is leaving (`""`: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The zooid that has it.
    pub zooid: String,
    /// The zooid it still has to be deleted at, or `""`.
    pub leaving: String,
}

/// A relay the host deleted that zooid has not confirmed deleting yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDeletion {
    /// The relay's id.
    pub id: String,
    /// When the host deleted it (unix seconds).
    pub requested_at: i64,
    /// The error of the last attempt to delete it at zooid, if that failed; empty otherwise.
    pub sync_error: String,
}

impl Query {
    /// Runs `f` on a pooled read connection, waiting for one when all
    /// [`StoreOptions::max_readers`] are in use.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let db = &self.db;
        let mut readers = db.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = loop {
            if let Some(conn) = readers.idle.pop() {
                drop(readers);
                break conn;
            }
            if readers.open < db.max_readers {
                readers.open += 1;
                drop(readers);
                let opened = match db.read_only {
                    true => open_read_only_connection(&db.path, db.busy_timeout),
                    false => open_connection(&db.path, db.busy_timeout),
                };
                match opened {
                    Ok(conn) => break conn,
                    Err(e) => {
                        db.readers
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .open -= 1;
                        db.reader_returned.notify_one();
                        return Err(e);
                    }
                }
            }
            readers = db
                .reader_returned
                .wait(readers)
                .unwrap_or_else(PoisonError::into_inner);
        };
        let result = f(&conn);
        db.readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .idle
            .push(conn);
        db.reader_returned.notify_one();
        result
    }

    /// Gives memory back after a burst: idle read connections beyond one are closed (a burst
    /// opens them again), and the remaining connections' page caches are emptied
    /// (`PRAGMA shrink_memory`; the writer's only if it is free). A connection refills its
    /// cache on its next use.
    #[doc(hidden)]
    pub fn release_memory(&self) {
        let shrink = |conn: &Connection| {
            if let Err(e) = conn.execute_batch("PRAGMA shrink_memory") {
                log::debug!("shrinking a connection's cache: {e}");
            }
        };
        let closed = {
            let mut readers = self
                .db
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let keep = readers.idle.len().min(1);
            let closed: Vec<Connection> = readers.idle.drain(keep..).collect();
            readers.open -= closed.len();
            for conn in &readers.idle {
                shrink(conn);
            }
            closed
        };
        drop(closed); // closed outside the lock
        self.db.reader_returned.notify_all();
        if let Ok(writer) = self.db.writer.try_lock() {
            shrink(&writer);
        }
    }

    /// Whether any connection committed since `seen` was taken (`PRAGMA data_version` on a
    /// connection kept for this); moves `seen` on. The first call answers true.
    pub(crate) fn changed(&self, seen: &mut Option<i64>) -> Result<bool> {
        let mut watch = self.db.watch.lock().unwrap_or_else(PoisonError::into_inner);
        if watch.is_none() {
            *watch = Some(open_connection(&self.db.path, self.db.busy_timeout)?);
        }
        let conn = watch.as_ref().expect("opened above");
        let version: i64 = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        let changed = *seen != Some(version);
        *seen = Some(version);
        Ok(changed)
    }

    /// How this process's writes of sync outcomes fare (see [`WriteHealth`]).
    #[doc(hidden)]
    pub fn write_health(&self) -> WriteHealth {
        let queue = self.db.queue.lock().unwrap_or_else(PoisonError::into_inner);
        WriteHealth {
            waiting: queue.retry.len(),
            ..queue.health.clone()
        }
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.db.path
    }

    /// The relay with this id, `None` if there is none. A row the host wrote badly is an error
    /// naming the column.
    pub fn get_relay(&self, id: &str) -> Result<Option<Relay>> {
        Ok(self.get_relay_for_sync(id)?.map(|found| found.relay))
    }

    /// The relay with this id and whether it ever completed a sync since it was created (a
    /// relay deleted and created again under the same id starts over), in one read: what a
    /// sync needs to choose between create and update.
    #[doc(hidden)]
    pub fn get_relay_for_sync(&self, id: &str) -> Result<Option<RelayForSync>> {
        fn sql(zooid_column: bool) -> String {
            format!(
                "SELECT {}, COALESCE((SELECT MAX(seq) FROM activity
                     WHERE resource_type = 'relay' AND resource_id = relay.id), 0),
                   EXISTS (SELECT 1 FROM activity
                     WHERE resource_type = 'relay' AND resource_id = relay.id
                       AND activity_type = 'complete_relay_sync'
                       AND seq > COALESCE((SELECT MAX(seq) FROM activity
                           WHERE resource_type = 'relay' AND resource_id = relay.id
                             AND activity_type = 'create_relay'), 0)),
                        (SELECT zooid FROM relay_placement WHERE relay_id = relay.id),
                        (SELECT leaving FROM relay_placement WHERE relay_id = relay.id)
                 FROM relay WHERE id = ?1",
                relay_select_list(zooid_column)
            )
        }
        static WITH: LazyLock<String> = LazyLock::new(|| sql(true));
        static WITHOUT: LazyLock<String> = LazyLock::new(|| sql(false));
        let sql = match self.db.relay_zooid {
            true => &WITH,
            false => &WITHOUT,
        };
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(sql)?;
            let mut rows = stmt.query([id])?;
            match rows.next()? {
                Some(row) => {
                    let seen: i64 = row.get(RELAY_WIDTH)?;
                    let ever_completed: bool = row.get(RELAY_WIDTH + 1)?;
                    let placed = match row.get::<_, Option<String>>(RELAY_WIDTH + 2)? {
                        Some(zooid) => Some(Placement {
                            zooid,
                            leaving: row.get(RELAY_WIDTH + 3)?,
                        }),
                        None => None,
                    };
                    Ok(Some(RelayForSync {
                        relay: Relay::from_row(row)?,
                        ever_completed,
                        placed,
                        seen,
                    }))
                }
                None => Ok(None),
            }
        })
        .with_context(|| format!("reading relay {id:?}"))
    }

    /// When relay `id` waits to be deleted at zooid (the host deleted its row with a
    /// `delete_relay` activity, and zooid has not confirmed the deletion since), that
    /// activity's `seq`.
    #[doc(hidden)]
    pub fn deletion_pending(&self, id: &str) -> Result<Option<i64>> {
        self.read(|conn| Ok(pending_deletion(conn, id)?))
            .with_context(|| format!("reading the deletion of relay {id:?}"))
    }

    /// The relays that wait to be deleted at zooid, the oldest deletion first, each with the
    /// error of its last attempt if that failed.
    pub fn list_pending_deletions(&self) -> Result<Vec<PendingDeletion>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT d.resource_id, COALESCE(CAST(d.created_at AS INTEGER), 0),
                        COALESCE((SELECT CASE WHEN n.activity_type = 'fail_relay_sync'
                                              THEN n.detail END
                                  FROM activity n
                                  WHERE n.resource_type = 'relay'
                                    AND n.resource_id = d.resource_id
                                  ORDER BY n.seq DESC LIMIT 1), '')
                 FROM activity d
                 WHERE d.activity_type = 'delete_relay' AND d.resource_type = 'relay'
                   AND typeof(d.resource_id) = 'text'
                   AND d.seq = (SELECT MAX(x.seq) FROM activity x
                                WHERE x.resource_type = 'relay'
                                  AND x.resource_id = d.resource_id
                                  AND x.activity_type IN ('delete_relay', 'complete_relay_sync'))
                   AND NOT EXISTS (SELECT 1 FROM relay r WHERE r.id = d.resource_id)
                 ORDER BY d.seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(PendingDeletion {
                    id: r.get(0)?,
                    requested_at: r.get(1)?,
                    sync_error: match r.get_ref(2)? {
                        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                        _ => String::new(),
                    },
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .context("listing relays waiting to be deleted at zooid")
    }

    /// How many relays are marked synced: what an audit pass checks.
    #[doc(hidden)]
    pub fn count_synced(&self) -> Result<u64> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT COUNT(*) FROM relay WHERE synced = 1")?
                .query_row([], |r| r.get(0))?)
        })
        .context("counting synced relays")
    }

    /// The first relay marked synced whose id comes after `after` (ids in byte order): the
    /// audit's next step, read by the primary key without holding a list of the fleet.
    #[doc(hidden)]
    pub fn next_synced_relay_after(&self, after: &str) -> Result<Option<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id FROM relay WHERE id > ?1 AND typeof(id) = 'text' AND synced = 1
                 ORDER BY id LIMIT 1",
            )?;
            let mut rows = stmt.query([after])?;
            Ok(match rows.next()? {
                Some(row) => Some(row.get(0)?),
                None => None,
            })
        })
        .context("reading the next relay to audit")
    }

    /// The subdomains of up to `n` relays zooid serves to their users now (synced and
    /// active), for asking zooid as a relay user would.
    pub fn served_subdomains(&self, n: usize) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT subdomain FROM relay WHERE synced = 1 AND status = 'active'
                   AND typeof(subdomain) = 'text' AND subdomain <> '' LIMIT ?1",
            )?;
            let rows = stmt.query_map([n as i64], |row| row.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .context("reading relays zooid serves")
    }

    /// Every relay, in id order, each read on its own: one bad row does not hide the others.
    pub fn list_relays(&self) -> Result<Vec<Result<Relay>>> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {} FROM relay ORDER BY id",
                relay_select_list(self.db.relay_zooid)
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query([])?;
            let mut relays = Vec::new();
            while let Some(row) = rows.next()? {
                relays.push(Relay::from_row(row));
            }
            Ok(relays)
        })
    }

    /// Relays with `synced = 0`, with their last sync error. A row whose id or error cannot
    /// be read is a [`BadRow`] in its place; the others are unaffected.
    pub fn list_relays_pending_sync(&self) -> Result<Vec<Result<PendingRelay, BadRow>>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT rowid, id, sync_error FROM relay WHERE synced = 0 ORDER BY updated_at, id",
            )?;
            let mut rows = stmt.query([])?;
            let mut pending = Vec::new();
            while let Some(row) = rows.next()? {
                pending.push(PendingRelay::from_row(row));
            }
            Ok(pending)
        })
        .context("listing relays pending sync")
    }

    /// How many `fail_relay_sync` activities the relay has had since its last other activity:
    /// the number of the attempt that just failed. Failures because zooid was unavailable
    /// ([`ZOOID_UNAVAILABLE`]) are passed over: they neither count nor end the run.
    #[doc(hidden)]
    pub fn count_trailing_sync_failures(&self, relay_id: &str) -> Result<u32> {
        Ok(self.trailing_sync_failures(relay_id)?.0)
    }

    /// [`count_trailing_sync_failures`](Self::count_trailing_sync_failures), and when the
    /// newest of them was recorded (unix seconds): what the next retry is scheduled from.
    #[doc(hidden)]
    pub fn trailing_sync_failures(&self, relay_id: &str) -> Result<(u32, Option<i64>)> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT activity_type, detail, created_at FROM activity
                 WHERE resource_type = 'relay' AND resource_id = ?1
                 ORDER BY seq DESC",
            )?;
            let mut rows = stmt.query([relay_id])?;
            let mut count = 0;
            let mut newest = None;
            while let Some(row) = rows.next()? {
                // An activity type that is not text is some other activity: it ends the run.
                if row.get_ref(0)?.as_str().ok() != Some(activity_type::FAIL_RELAY_SYNC) {
                    break;
                }
                let detail = row.get_ref(1)?.as_str().unwrap_or("");
                if !detail.starts_with(ZOOID_UNAVAILABLE) {
                    count += 1;
                    newest = newest.or(row.get_ref(2)?.as_i64().ok());
                }
            }
            Ok((count, newest))
        })
        .with_context(|| format!("counting failed syncs of relay {relay_id:?}"))
    }

    /// The newest `fail_relay_sync` activity of the relay, if its newest activity is one.
    #[doc(hidden)]
    pub fn trailing_sync_failure(&self, relay_id: &str) -> Result<Option<Activity>> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {ACTIVITY_SELECT_LIST} FROM activity
                 WHERE resource_type = 'relay' AND resource_id = ?1
                 ORDER BY seq DESC LIMIT 1"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query([relay_id])?;
            let newest = match rows.next()? {
                Some(row) => Some(Activity::from_row(row)?),
                None => None,
            };
            Ok(newest.filter(|a| a.activity_type == activity_type::FAIL_RELAY_SYNC))
        })
    }

    /// Whether zooid ever accepted this relay (a `complete_relay_sync` exists).
    #[doc(hidden)]
    pub fn has_completed_sync(&self, relay_id: &str) -> Result<bool> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM activity
                 WHERE resource_type = 'relay' AND resource_id = ?1
                   AND activity_type = 'complete_relay_sync')",
            )?;
            Ok(stmt.query_row([relay_id], |r| r.get(0))?)
        })
        .with_context(|| format!("reading the sync history of relay {relay_id:?}"))
    }

    /// Up to `limit` activities with `seq > after`, oldest first. A row that cannot be read
    /// is a [`BadRow`] in its place, so a reader can move past it.
    #[doc(hidden)]
    pub fn activities_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Result<Activity, BadRow>>> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {ACTIVITY_SELECT_LIST} FROM activity WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params![after, limit as i64])?;
            let mut activities = Vec::new();
            while let Some(row) = rows.next()? {
                activities.push(Activity::from_row(row));
            }
            Ok(activities)
        })
        .context("reading new activity")
    }

    /// Runs `f` on one of the read connections (for checks that look at the schema).
    #[cfg(feature = "cli")]
    pub(crate) fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.read(f)
    }

    /// The settings the worker that last held the lease recorded when it started: `name`
    /// and `value` pairs (`retry_base_ms`, `retry_cap_ms`, `retry_max_attempts`,
    /// `relay_domain`, `zooid_api_url`, ...). Empty when no worker recorded any.
    #[doc(hidden)]
    pub fn worker_settings(&self) -> Result<Vec<(String, String)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT name, value FROM worker_settings")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .context("reading the worker's settings")
    }

    /// How many relays there are.
    pub fn count_relays(&self) -> Result<u64> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT COUNT(*) FROM relay", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    /// How many relays wait for a sync.
    pub fn count_pending(&self) -> Result<u64> {
        self.read(|conn| {
            Ok(
                conn.query_row("SELECT COUNT(*) FROM relay WHERE synced = 0", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64,
            )
        })
    }

    /// Relays waiting for a sync (`synced = 0`) by the zooid their row names (`''`: the
    /// default one; all of them there when the relay table has no `zooid` column).
    #[doc(hidden)]
    pub fn count_pending_by_zooid(&self) -> Result<Vec<(String, u64)>> {
        if !self.db.relay_zooid {
            return Ok(vec![(String::new(), self.count_pending()?)]);
        }
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT zooid, COUNT(*) FROM relay WHERE synced = 0 GROUP BY zooid ORDER BY zooid",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .context("counting pending relays by zooid")
    }

    /// The outage of the zooid named `zooid` in progress, as its breaker recorded it: since
    /// when (unix seconds) and the last error. `None` while that zooid answers.
    #[doc(hidden)]
    pub fn zooid_outage(&self, zooid: &str) -> Result<Option<(i64, String)>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT since, last_error FROM zooid_outage WHERE zooid = ?1")?;
            let mut rows = stmt.query([zooid])?;
            match rows.next()? {
                Some(row) => Ok(Some((row.get(0)?, row.get(1)?))),
                None => Ok(None),
            }
        })
        .with_context(|| format!("reading the recorded outage of zooid {zooid}"))
    }

    /// Every zooid outage in progress, by zooid name: (name, since, last error).
    #[doc(hidden)]
    pub fn zooid_outages(&self) -> Result<Vec<(String, i64, String)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT zooid, since, last_error FROM zooid_outage ORDER BY zooid",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .context("reading the recorded zooid outages")
    }

    /// The zooid that relay `id`'s next sync goes to, as the database says now: the one its
    /// row names (`''`: the default one), or for a relay without a row the one it was last
    /// synced to (`''` if it never lived elsewhere). Needs the relay table's `zooid` column.
    #[doc(hidden)]
    pub fn relay_zooid(&self, id: &str) -> Result<String> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT COALESCE((SELECT zooid FROM relay WHERE id = ?1),
                                     (SELECT zooid FROM relay_placement WHERE relay_id = ?1),
                                     '')",
                )?
                .query_row([id], |r| r.get::<_, String>(0))?)
        })
        .with_context(|| format!("reading which zooid relay {id:?} lives at"))
    }

    /// Where relay `id` lives at zooid, when recorded (not for a relay only ever synced to the
    /// default zooid).
    #[doc(hidden)]
    pub fn relay_placement(&self, id: &str) -> Result<Option<Placement>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT zooid, leaving FROM relay_placement WHERE relay_id = ?1")?;
            let mut rows = stmt.query([id])?;
            match rows.next()? {
                Some(row) => Ok(Some(Placement {
                    zooid: row.get(0)?,
                    leaving: row.get(1)?,
                })),
                None => Ok(None),
            }
        })
        .with_context(|| format!("reading where relay {id:?} was synced to"))
    }

    /// Whether the relay table has the `zooid` column, which relays need to name a zooid
    /// other than the default one.
    #[doc(hidden)]
    pub fn has_zooid_column(&self) -> bool {
        self.db.relay_zooid
    }

    /// Manual sync requests after `after` that no worker answered yet: (request, relay id).
    #[doc(hidden)]
    pub fn unanswered_sync_requests(&self, after: i64) -> Result<Vec<(i64, String)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, relay_id FROM sync_request
                 WHERE id > ?1 AND outcome IS NULL ORDER BY id",
            )?;
            let rows = stmt.query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .context("reading manual sync requests")
    }

    /// How many of the manual sync requests `first..=last` are answered, and how many of
    /// those synced.
    #[doc(hidden)]
    pub fn count_sync_answers(&self, first: i64, last: i64) -> Result<(u64, u64)> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT COUNT(outcome), COALESCE(SUM(outcome = 'synced'), 0) FROM sync_request
                 WHERE id BETWEEN ?1 AND ?2",
            )?;
            Ok(stmt.query_row([first, last], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?)
        })
        .context("counting the answers to manual sync requests")
    }

    /// The answers to the manual sync requests `first..=last` so far: (request, relay id,
    /// outcome, detail).
    #[doc(hidden)]
    pub fn sync_answers(&self, first: i64, last: i64) -> Result<Vec<SyncAnswer>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, relay_id, outcome, detail FROM sync_request
                 WHERE id BETWEEN ?1 AND ?2 AND outcome IS NOT NULL ORDER BY id",
            )?;
            let rows = stmt.query_map([first, last], |r| {
                Ok(SyncAnswer {
                    request: r.get(0)?,
                    relay: r.get(1)?,
                    outcome: r.get(2)?,
                    detail: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .context("reading the answers to manual sync requests")
    }

    /// Ids of relays waiting for a sync whose last attempt failed (waiting on their backoff or
    /// given up), or of every relay when `all`. Ids that are not text are left out.
    #[doc(hidden)]
    pub fn relay_ids(&self, only_failed: bool) -> Result<Vec<String>> {
        self.read(|conn| {
            let sql = if only_failed {
                "SELECT id FROM relay WHERE synced = 0 AND sync_error != '' ORDER BY id"
            } else {
                "SELECT id FROM relay ORDER BY id"
            };
            let mut stmt = conn.prepare_cached(sql)?;
            let mut rows = stmt.query([])?;
            let mut ids = Vec::new();
            while let Some(row) = rows.next()? {
                if let Ok(id) = row.get::<_, String>(0) {
                    ids.push(id);
                }
            }
            Ok(ids)
        })
        .context("listing relays")
    }

    /// The oldest and the newest activity's `seq` (0 and 0 when there is none).
    #[doc(hidden)]
    pub fn activity_seq_range(&self) -> Result<(i64, i64)> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM activity",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
    }

    /// How many activity rows there are.
    #[doc(hidden)]
    pub fn count_activity(&self) -> Result<u64> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT COUNT(*) FROM activity", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    /// Activity rows the feed skipped because they cannot be read, since the store opened.
    #[doc(hidden)]
    pub fn bad_activity_rows(&self) -> u64 {
        self.db
            .bad_activity_rows
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The newest activity's `seq`, 0 when there is none.
    #[doc(hidden)]
    pub fn last_activity_seq(&self) -> Result<i64> {
        self.read(|conn| {
            Ok(
                conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM activity", [], |r| {
                    r.get(0)
                })?,
            )
        })
    }
}
