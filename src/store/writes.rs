//! [`Write`], every write as data, and what each does in SQL ([`Write::apply`]), with the
//! small queries they share: who deleted or replaced a relay, and the activity each write
//! appends.

use super::*;

/// One write, as data, so that whichever thread holds the writer connection can apply it.
pub(super) enum Write {
    Complete {
        relay_id: String,
        revision: i64,
        /// The relay's newest activity when the sync read it, if known.
        seen: Option<i64>,
        /// Where the relay now lives at zooid, to record in `relay_placement`, if it changed.
        placed: Option<Placement>,
    },
    Fail {
        relay_id: String,
        error: String,
        /// The relay's newest activity when the sync read it, if known.
        seen: Option<i64>,
        /// Where the relay now lives at zooid, if the failed sync changed it (a move half done).
        placed: Option<Placement>,
    },
    Create {
        id: String,
        settings: RelaySettings,
        /// Whether the relay table has the `zooid` column (written only then).
        zooid_column: bool,
    },
    Update {
        id: String,
        settings: RelaySettings,
        zooid_column: bool,
    },
    SetStatus {
        id: String,
        status: RelayStatus,
        activity: &'static str,
    },
    /// The host deletes a relay.
    Delete { id: String },
    /// zooid no longer has a synced relay: it is pending again.
    Lost { relay_id: String },
    /// zooid confirmed a relay's deletion (`detail` says how).
    Deleted { relay_id: String, detail: String },
    /// The answer to a manual sync request.
    Answer {
        request: i64,
        outcome: String,
        detail: String,
    },
}

impl Write {
    pub(super) fn describe(&self) -> String {
        match self {
            Write::Complete { relay_id, .. } => format!("recording the sync of relay {relay_id:?}"),
            Write::Fail { relay_id, .. } => {
                format!("recording the failed sync of relay {relay_id:?}")
            }
            Write::Create { id, .. } => format!("creating relay {id:?}"),
            Write::Update { id, .. } => format!("updating relay {id:?}"),
            Write::SetStatus { id, activity, .. } => format!("{activity} {id:?}"),
            Write::Delete { id } => format!("deleting relay {id:?}"),
            Write::Lost { relay_id } => format!("marking relay {relay_id:?} pending"),
            Write::Deleted { relay_id, .. } => {
                format!("recording the deletion of relay {relay_id:?} at zooid")
            }
            Write::Answer { request, .. } => format!("answering manual sync request {request}"),
        }
    }

    /// Applies the write inside the current transaction.
    pub(super) fn apply(&self, conn: &Connection) -> Result<Applied> {
        let no_relay = |id: &str| anyhow::Error::new(NoSuchRelay(id.to_string()));
        let appended = |activity: Activity, changed: bool| Applied {
            activity: Some(activity),
            changed,
        };
        // A relay deleted while its sync was in flight gets no outcome: there is nothing to
        // record it on, and an activity about it would name no owner.
        let gone = Applied {
            activity: None,
            changed: false,
        };
        match self {
            Write::Complete {
                relay_id,
                revision,
                seen,
                placed,
            } => {
                // Where zooid has it is true whatever became of the row: a deletion must find it.
                place(conn, relay_id, placed.as_ref())?;
                // Deleted since the sync read it: a row under its id now is another relay
                // (revisions start over), which this outcome says nothing about.
                if !relay_exists(conn, relay_id)? || replaced_since(conn, relay_id, *seen)? {
                    return Ok(gone);
                }
                let activity = insert_activity(
                    conn,
                    relay_id,
                    activity_type::COMPLETE_RELAY_SYNC,
                    &format!("revision {revision}"),
                )?;
                let marked = conn
                    .prepare_cached(
                        "UPDATE relay SET synced = 1, sync_error = '' WHERE id = ?1 AND revision = ?2",
                    )?
                    .execute(params![relay_id, revision])?
                    > 0;
                Ok(appended(activity, marked))
            }
            Write::Fail {
                relay_id,
                error,
                seen,
                placed,
            } => {
                place(conn, relay_id, placed.as_ref())?;
                // Deleted or created again since the sync read it: the failure was another
                // relay's.
                if replaced_since(conn, relay_id, *seen)? {
                    return Ok(gone);
                }
                if !relay_exists(conn, relay_id)? {
                    // A deletion's failures are recorded in the log alone: there is no row.
                    if !deletion_pending(conn, relay_id)? {
                        return Ok(gone);
                    }
                    let activity =
                        insert_activity(conn, relay_id, activity_type::FAIL_RELAY_SYNC, error)?;
                    return Ok(appended(activity, false));
                }
                let activity =
                    insert_activity(conn, relay_id, activity_type::FAIL_RELAY_SYNC, error)?;
                let changed = conn
                    .prepare_cached("UPDATE relay SET sync_error = ?2 WHERE id = ?1")?
                    .execute(params![relay_id, error])?;
                Ok(appended(activity, changed > 0))
            }
            Write::Delete { id } => {
                if !relay_exists(conn, id)? {
                    return Err(no_relay(id));
                }
                // Appended first: the activity takes its tenant from the row.
                let activity = insert_activity(conn, id, activity_type::DELETE_RELAY, "")?;
                conn.prepare_cached("DELETE FROM relay WHERE id = ?1")?
                    .execute([id])?;
                Ok(appended(activity, true))
            }
            Write::Lost { relay_id } => {
                let changed = conn
                    .prepare_cached("UPDATE relay SET synced = 0 WHERE id = ?1 AND synced = 1")?
                    .execute([relay_id])?;
                Ok(Applied {
                    activity: None,
                    changed: changed > 0,
                })
            }
            Write::Deleted { relay_id, detail } => {
                // Created again meanwhile: that relay's own sync follows, and its history
                // must not say it completed one.
                if !deletion_pending(conn, relay_id)? {
                    return Ok(gone);
                }
                // It lives at no zooid any more.
                conn.prepare_cached("DELETE FROM relay_placement WHERE relay_id = ?1")?
                    .execute([relay_id])?;
                let activity =
                    insert_activity(conn, relay_id, activity_type::COMPLETE_RELAY_SYNC, detail)?;
                Ok(appended(activity, true))
            }
            Write::Answer {
                request,
                outcome,
                detail,
            } => {
                let changed = conn
                    .prepare_cached(
                        "UPDATE sync_request SET outcome = ?2, detail = ?3 WHERE id = ?1",
                    )?
                    .execute(params![request, outcome, detail])?;
                Ok(Applied {
                    activity: None,
                    changed: changed > 0,
                })
            }
            Write::Create {
                id,
                settings,
                zooid_column,
            } => {
                let now = now_unix();
                let columns = settings_columns(*zooid_column);
                let sql = format!(
                    "INSERT INTO relay (id, synced, sync_error, revision, created_at, updated_at, {})
                     VALUES (?1, 0, '', 1, ?2, ?2, {})",
                    columns.join(", "),
                    (3..3 + columns.len())
                        .map(|i| format!("?{i}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let mut values: Vec<rusqlite::types::Value> = vec![id.clone().into(), now.into()];
                values.extend(settings.to_values(*zooid_column));
                conn.execute(&sql, params_from_iter(values))?;
                let activity = insert_activity(conn, id, activity_type::CREATE_RELAY, "")?;
                Ok(appended(activity, true))
            }
            Write::Update {
                id,
                settings,
                zooid_column,
            } => {
                let assignments = settings_columns(*zooid_column)
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c} = ?{}", i + 3))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "UPDATE relay SET {assignments}, synced = 0, revision = revision + 1,
                     updated_at = ?2 WHERE id = ?1"
                );
                let mut values: Vec<rusqlite::types::Value> =
                    vec![id.clone().into(), now_unix().into()];
                values.extend(settings.to_values(*zooid_column));
                if conn.execute(&sql, params_from_iter(values))? == 0 {
                    return Err(no_relay(id));
                }
                let activity = insert_activity(conn, id, activity_type::UPDATE_RELAY, "")?;
                Ok(appended(activity, true))
            }
            Write::SetStatus {
                id,
                status,
                activity,
            } => {
                let changed = conn.execute(
                    "UPDATE relay SET status = ?2, synced = 0, revision = revision + 1,
                     updated_at = ?3 WHERE id = ?1",
                    params![id, status.as_str(), now_unix()],
                )?;
                if changed == 0 {
                    return Err(no_relay(id));
                }
                Ok(appended(insert_activity(conn, id, activity, "")?, true))
            }
        }
    }
}

/// Whether relay `id` exists.
/// Whether the host deleted relay `id` and zooid has not confirmed it: its row is gone, and
/// its newest `delete_relay` is newer than its newest `complete_relay_sync`.
pub(super) fn deletion_pending(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(pending_deletion(conn, id)?.is_some())
}

/// The `seq` of relay `id`'s pending `delete_relay`, if its deletion is pending.
pub(super) fn pending_deletion(conn: &Connection, id: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT seq FROM activity
         WHERE NOT EXISTS (SELECT 1 FROM relay WHERE id = ?1)
           AND seq = (SELECT seq FROM activity
                      WHERE resource_type = 'relay' AND resource_id = ?1
                        AND activity_type IN ('delete_relay', 'complete_relay_sync')
                      ORDER BY seq DESC LIMIT 1)
           AND activity_type = 'delete_relay'",
    )?
    .query_row([id], |r| r.get(0))
    .optional()
}

/// Whether relay `id` was deleted or created again after its activity `seen` (never, for
/// `None`): then the relay a sync read is not the one that holds the id now.
pub(super) fn replaced_since(
    conn: &Connection,
    id: &str,
    seen: Option<i64>,
) -> rusqlite::Result<bool> {
    let Some(seen) = seen else { return Ok(false) };
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM activity
         WHERE resource_type = 'relay' AND resource_id = ?1 AND seq > ?2
           AND activity_type IN ('delete_relay', 'create_relay'))",
    )?
    .query_row(params![id, seen], |r| r.get(0))
}

pub(super) fn relay_exists(conn: &Connection, id: &str) -> Result<bool> {
    let mut stmt = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM relay WHERE id = ?1)")?;
    Ok(stmt.query_row([id], |r| r.get(0))?)
}

/// Appends an activity about relay `relay_id`, owned by the relay's tenant.
pub(super) fn insert_activity(
    tx: &Connection,
    relay_id: &str,
    activity_type: &str,
    detail: &str,
) -> Result<Activity> {
    let id = crate::secret::random_hex(16);
    let created_at = now_unix();
    let mut stmt = tx.prepare_cached(
        "INSERT INTO activity (id, tenant_pubkey, created_at, activity_type, resource_type,
                               resource_id, detail)
         VALUES (?1, COALESCE((SELECT tenant_pubkey FROM relay WHERE id = ?3), ''), ?2, ?4,
                 'relay', ?3, ?5)
         RETURNING seq, tenant_pubkey",
    )?;
    let (seq, tenant_pubkey) = stmt.query_row(
        params![id, created_at, relay_id, activity_type, detail],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Activity {
        seq,
        id,
        tenant_pubkey,
        created_at,
        activity_type: activity_type.to_string(),
        resource_type: RELAY_RESOURCE.to_string(),
        resource_id: relay_id.to_string(),
        detail: detail.to_string(),
    })
}

/// Records where relay `id` lives at zooid, when `placed` says.
fn place(conn: &Connection, id: &str, placed: Option<&Placement>) -> Result<()> {
    if let Some(Placement { zooid, leaving }) = placed {
        conn.prepare_cached(
            "INSERT INTO relay_placement (relay_id, zooid, leaving) VALUES (?1, ?2, ?3)
             ON CONFLICT (relay_id) DO UPDATE SET zooid = excluded.zooid,
                                                  leaving = excluded.leaving",
        )?
        .execute(params![id, zooid, leaving])?;
    }
    Ok(())
}

/// The host-edited columns a write sets: the settings', and `zooid` when the table has it.
fn settings_columns(zooid_column: bool) -> Vec<&'static str> {
    let mut columns = SETTINGS_COLUMNS.to_vec();
    if zooid_column {
        columns.push("zooid");
    }
    columns
}
