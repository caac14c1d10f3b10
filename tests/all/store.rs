//! The store against a real SQLite file: schema, queries, writes, the revision guard, the bus,
//! malformed rows, and use from several threads.

use crate::common::*;
use rusqlite::Connection;
use zooid_sync::Store;
use zooid_sync::{activity_type, PendingRelay, RecvError, StoreOptions};

fn schema_of(conn: &Connection) -> Vec<(String, String, String)> {
    let mut stmt = conn
        .prepare(
            "SELECT type, name, sql FROM sqlite_master
             WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
        )
        .unwrap();
    stmt.query_map([], |r| {
        let sql: String = r.get(2)?;
        Ok((
            r.get(0)?,
            r.get(1)?,
            sql.split_whitespace().collect::<Vec<_>>().join(" "),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[test]
fn migrations_match_the_published_schema() {
    let (_dir, path) = temp_db();
    let store = open_store(&path);
    let migrated = Connection::open(store.query.path()).unwrap();

    let published = Connection::open_in_memory().unwrap();
    published
        .execute_batch(include_str!("../../fixtures/schema.sql"))
        .unwrap();
    assert_eq!(schema_of(&migrated), schema_of(&published));
    assert!(!schema_of(&migrated).is_empty());

    let version: i64 = migrated
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, zooid_sync::SCHEMA_VERSION);
    let mode: String = migrated
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn reopening_keeps_data_and_a_newer_schema_is_refused() {
    let (_dir, path) = temp_db();
    open_store(&path)
        .command
        .create_relay("alpha", &settings("alpha"))
        .unwrap();
    let store = open_store(&path);
    assert!(store.query.get_relay("alpha").unwrap().is_some());

    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = format!("{:#}", Store::open(&path).unwrap_err());
    assert!(err.contains("schema version 99"), "{err}");
}

#[test]
fn an_unopenable_database_is_a_clear_error() {
    let err = Store::open("/nonexistent-dir/sub/zooid.db").unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("cannot open the database /nonexistent-dir/sub/zooid.db"),
        "{text}"
    );
}

#[test]
fn host_writes_bump_the_revision_and_leave_the_relay_pending() {
    let (_dir, path) = temp_db();
    let Store { query, command } = open_store(&path);
    let created = command.create_relay("alpha", &settings("alpha")).unwrap();
    assert_eq!(created.activity_type, activity_type::CREATE_RELAY);
    assert_eq!(created.tenant_pubkey, OWNER);
    let relay = query.get_relay("alpha").unwrap().unwrap();
    assert_eq!((relay.revision, relay.synced), (1, false));
    assert_eq!(relay.settings, settings("alpha"));

    assert!(command.complete_relay_sync("alpha", 1).unwrap());
    assert!(query.get_relay("alpha").unwrap().unwrap().synced);

    let mut changed = settings("alpha");
    changed.info_name = "Renamed".into();
    command.update_relay("alpha", &changed).unwrap();
    command.deactivate_relay("alpha").unwrap();
    let relay = query.get_relay("alpha").unwrap().unwrap();
    assert_eq!(relay.revision, 3);
    assert!(!relay.synced);
    assert_eq!(relay.settings.info_name, "Renamed");
    assert_eq!(relay.settings.status, zooid_sync::RelayStatus::Inactive);
    command.activate_relay("alpha").unwrap();
    assert_eq!(query.get_relay("alpha").unwrap().unwrap().revision, 4);

    let err = command.update_relay("missing", &changed).unwrap_err();
    assert!(format!("{err:#}").contains("there is no relay \"missing\""));
}

#[test]
fn a_completion_for_an_old_revision_leaves_the_relay_pending() {
    let (_dir, path) = temp_db();
    let Store { query, command } = open_store(&path);
    command.create_relay("alpha", &settings("alpha")).unwrap();
    command
        .fail_relay_sync("alpha", "zooid answered 503")
        .unwrap();
    // The sync read revision 1; meanwhile the host changed the relay.
    command.update_relay("alpha", &settings("alpha")).unwrap();
    assert!(!command.complete_relay_sync("alpha", 1).unwrap());
    let relay = query.get_relay("alpha").unwrap().unwrap();
    assert!(!relay.synced, "revision 2 was never sent");
    assert_eq!(relay.sync_error, "zooid answered 503");
    // The completion itself is recorded.
    assert!(query.has_completed_sync("alpha").unwrap());
    assert_eq!(
        query.list_relays_pending_sync().unwrap(),
        vec![Ok(PendingRelay {
            id: "alpha".into(),
            sync_error: "zooid answered 503".into()
        })]
    );
    assert!(command.complete_relay_sync("alpha", 2).unwrap());
    let relay = query.get_relay("alpha").unwrap().unwrap();
    assert!(relay.synced && relay.sync_error.is_empty());
    assert!(query.list_relays_pending_sync().unwrap().is_empty());
}

#[test]
fn trailing_failures_count_back_to_the_last_other_activity() {
    let (_dir, path) = temp_db();
    let Store { query, command } = open_store(&path);
    command.create_relay("alpha", &settings("alpha")).unwrap();
    command.create_relay("beta", &settings("beta")).unwrap();
    assert_eq!(query.count_trailing_sync_failures("alpha").unwrap(), 0);
    command.fail_relay_sync("alpha", "e1").unwrap();
    command.fail_relay_sync("beta", "other relay").unwrap();
    command.fail_relay_sync("alpha", "e2").unwrap();
    assert_eq!(query.count_trailing_sync_failures("alpha").unwrap(), 2);
    assert_eq!(
        query
            .trailing_sync_failure("alpha")
            .unwrap()
            .unwrap()
            .detail,
        "e2"
    );
    command.update_relay("alpha", &settings("alpha")).unwrap();
    assert_eq!(query.count_trailing_sync_failures("alpha").unwrap(), 0);
    assert!(query.trailing_sync_failure("alpha").unwrap().is_none());
    command.fail_relay_sync("alpha", "e3").unwrap();
    assert_eq!(query.count_trailing_sync_failures("alpha").unwrap(), 1);
    command.complete_relay_sync("alpha", 2).unwrap();
    assert_eq!(query.count_trailing_sync_failures("alpha").unwrap(), 0);
    assert_eq!(query.count_trailing_sync_failures("beta").unwrap(), 1);
}

#[test]
fn activities_after_a_cursor_come_in_order() {
    let (_dir, path) = temp_db();
    let Store { query, command } = open_store(&path);
    assert_eq!(query.last_activity_seq().unwrap(), 0);
    let a = command.create_relay("alpha", &settings("alpha")).unwrap();
    let b = command.create_relay("beta", &settings("beta")).unwrap();
    command.fail_relay_sync("alpha", "boom").unwrap();
    let all: Vec<_> = query
        .activities_after(0, 100)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0], a);
    assert_eq!(all[1], b);
    assert_eq!(all[2].detail, "boom");
    assert_eq!(
        query.activities_after(a.seq, 1).unwrap(),
        vec![Ok(b.clone())]
    );
    assert_eq!(query.last_activity_seq().unwrap(), all[2].seq);
}

#[test]
fn every_write_is_announced_on_the_bus_and_the_bus_closes_with_the_last_command() {
    let (_dir, path) = temp_db();
    let Store { query: _q, command } = open_store(&path);
    let sub = command.notify.subscribe();
    let weak = command.weak();
    command.create_relay("alpha", &settings("alpha")).unwrap();
    weak.fail_relay_sync("alpha", "boom").unwrap();
    command.complete_relay_sync("alpha", 1).unwrap();
    let types: Vec<String> = (0..3).map(|_| sub.recv().unwrap().activity_type).collect();
    assert_eq!(
        types,
        ["create_relay", "fail_relay_sync", "complete_relay_sync"]
    );
    drop(command);
    assert_eq!(sub.recv(), Err(RecvError::Closed));
}

#[test]
fn a_tiny_bus_reports_lag() {
    let (_dir, path) = temp_db();
    let store = Store::open_with(
        &path,
        StoreOptions {
            bus_capacity: 1,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let sub = store.command.notify.subscribe();
    for name in ["a", "b", "c"] {
        store.command.create_relay(name, &settings(name)).unwrap();
    }
    assert_eq!(sub.recv(), Err(RecvError::Lagged(2)));
    assert_eq!(sub.recv().unwrap().resource_id, "a");
}

#[test]
fn malformed_rows_are_errors_that_name_the_column() {
    let (_dir, path) = temp_db();
    let Store { query, command } = open_store(&path);
    command.create_relay("alpha", &settings("alpha")).unwrap();
    let host = Connection::open(&path).unwrap();
    let cases = [
        ("synced = 2", "column synced holds 2"),
        ("status = 'paused'", "unknown status \"paused\""),
        ("groups_enabled = 'yes'", "column groups_enabled holds text"),
        ("info_name = x'ff00'", "column info_name holds a blob"),
        (
            "info_name = CAST(x'ff' AS TEXT)",
            "column info_name is not valid UTF-8",
        ),
        ("revision = 1.5", "column revision holds a real number"),
    ];
    for (assignment, expected) in cases {
        host.execute(
            &format!("UPDATE relay SET {assignment} WHERE id = 'alpha'"),
            [],
        )
        .unwrap();
        let err = format!("{:#}", query.get_relay("alpha").unwrap_err());
        assert!(err.contains("relay \"alpha\""), "{err}");
        assert!(err.contains(expected), "{assignment}: {err}");
        // Put the good row back.
        host.execute("DELETE FROM relay", []).unwrap();
        command.create_relay("alpha", &settings("alpha")).unwrap();
    }
    // One bad row does not hide the good ones.
    command.create_relay("beta", &settings("beta")).unwrap();
    host.execute("UPDATE relay SET synced = 7 WHERE id = 'alpha'", [])
        .unwrap();
    let all = query.list_relays().unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].is_err());
    assert_eq!(all[1].as_ref().unwrap().id, "beta");
}

#[test]
fn query_and_command_work_from_many_threads_at_once() {
    let (_dir, path) = temp_db();
    let Store { query, command } = open_store(&path);
    for i in 0..8 {
        command
            .create_relay(&format!("r{i}"), &settings(&format!("r{i}")))
            .unwrap();
    }
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (query, command) = (query.clone(), command.clone());
            std::thread::spawn(move || {
                let id = format!("r{i}");
                for n in 0..25 {
                    command.fail_relay_sync(&id, &format!("e{n}")).unwrap();
                    assert_eq!(query.count_trailing_sync_failures(&id).unwrap(), n + 1);
                    assert!(query.get_relay(&id).unwrap().is_some());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(query.activities_after(0, 10_000).unwrap().len(), 8 + 8 * 25);
}

/// Appends an activity about `resource` written `days_ago` days ago.
fn past_activity(conn: &Connection, kind: &str, resource: &str, days_ago: i64, detail: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    conn.execute(
        "INSERT INTO activity (id, tenant_pubkey, created_at, activity_type, resource_type,
                               resource_id, detail)
         VALUES (hex(randomblob(16)), ?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            OWNER,
            now - days_ago * 86_400,
            kind,
            if resource.starts_with("tenant") {
                "tenant"
            } else {
                "relay"
            },
            resource,
            detail
        ],
    )
    .unwrap();
}

#[test]
fn prune_keeps_everything_the_worker_needs_from_a_year_of_activity() {
    let fx = fixture();
    let (_dir, db) = temp_db();
    let store = open_store(&db);
    let conn = Connection::open(&db).unwrap();
    let weekly: Vec<String> = (0..30).map(|i| format!("w{i}")).collect();
    let special = ["failing", "gaveup", "never", "pending"];
    for id in weekly.iter().map(String::as_str).chain(special) {
        host_creates(&conn, id);
        conn.execute("UPDATE relay SET synced = 1 WHERE id = ?1", [id])
            .unwrap();
    }
    conn.execute_batch("DELETE FROM activity").unwrap();
    // A year of weekly changes, each synced.
    for id in &weekly {
        past_activity(&conn, "create_relay", id, 365, "");
        past_activity(&conn, "complete_relay_sync", id, 365, "revision 1");
        for week in (1..52).rev() {
            past_activity(&conn, "update_relay", id, week * 7, "");
            past_activity(&conn, "complete_relay_sync", id, week * 7, "");
        }
    }
    // Failing for 100 days (3 failures); gave up 200 days ago (7 failures); never created at
    // zooid; and a change the worker has not synced yet.
    for (id, fails, days) in [("failing", 3, 100), ("gaveup", 7, 200)] {
        past_activity(&conn, "complete_relay_sync", id, 300, "");
        past_activity(&conn, "update_relay", id, days + 1, "");
        for k in 0..fails {
            past_activity(&conn, "fail_relay_sync", id, days - k, "zooid answered 400");
        }
        conn.execute(
            "UPDATE relay SET synced = 0, sync_error = 'zooid answered 400' WHERE id = ?1",
            [id],
        )
        .unwrap();
    }
    past_activity(&conn, "create_relay", "never", 365, "");
    for k in 0..5 {
        past_activity(
            &conn,
            "fail_relay_sync",
            "never",
            360 - k,
            "zooid answered 400",
        );
    }
    conn.execute("UPDATE relay SET synced = 0 WHERE id = 'never'", [])
        .unwrap();
    past_activity(&conn, "complete_relay_sync", "pending", 200, "");
    past_activity(&conn, "update_relay", "pending", 150, "");
    past_activity(&conn, "complete_relay_sync", "pending", 120, "");
    conn.execute("UPDATE relay SET synced = 0 WHERE id = 'pending'", [])
        .unwrap();
    past_activity(&conn, "tenant_signed_up", "tenant-1", 300, "");

    let ids: Vec<&str> = weekly.iter().map(String::as_str).chain(special).collect();
    let before: Vec<(u32, bool)> = ids
        .iter()
        .map(|id| {
            (
                store.query.count_trailing_sync_failures(id).unwrap(),
                store.query.has_completed_sync(id).unwrap(),
            )
        })
        .collect();
    let rows_before = store.query.count_activity().unwrap();

    let out = run_cli(&fx, &db, &["prune", "--older-than", "90d"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    let rows_after = store.query.count_activity().unwrap();
    assert!(
        rows_after < rows_before / 3,
        "{rows_before} -> {rows_after}"
    );
    let after: Vec<(u32, bool)> = ids
        .iter()
        .map(|id| {
            (
                store.query.count_trailing_sync_failures(id).unwrap(),
                store.query.has_completed_sync(id).unwrap(),
            )
        })
        .collect();
    assert_eq!(before, after, "attempts and create-or-update unchanged");
    let pending_rows: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM activity WHERE resource_id = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        pending_rows, 3,
        "a relay waiting for a sync keeps its history"
    );
    let tenant_rows: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM activity WHERE resource_type = 'tenant'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        tenant_rows, 0,
        "the host's old rows about other things go by age"
    );
    // Too young an age is refused by name.
    let out = run_cli(&fx, &db, &["prune", "--older-than", "10m"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--older-than must be at least 1h"));

    // The next sync of every relay that zooid has is still a PATCH; "never" is created.
    let out = run_cli(&fx, &db, &["sync", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for id in &ids {
        let first = &fx.requests_for(id)[0];
        let expected = if *id == "never" { "POST" } else { "PATCH" };
        assert_eq!(first.method, expected, "{id}");
    }
}

#[test]
fn a_deletion_is_pending_until_zooid_confirms_it_and_a_relay_created_again_starts_over() {
    let (_dir, path) = temp_db();
    let store = open_store(&path);
    let (q, c) = (&store.query, &store.command);
    c.create_relay("alpha", &settings("alpha")).unwrap();
    c.create_relay("beta", &settings("beta")).unwrap();
    assert!(c.complete_relay_sync("alpha", 1).unwrap());
    assert_eq!(q.deletion_pending("alpha").unwrap(), None, "not deleted");

    let deleted = c.delete_relay("alpha").unwrap();
    assert_eq!(deleted.activity_type, activity_type::DELETE_RELAY);
    assert_eq!(deleted.tenant_pubkey, OWNER, "owned by the relay's tenant");
    assert!(q.get_relay("alpha").unwrap().is_none(), "its row is gone");
    assert_eq!(q.deletion_pending("alpha").unwrap(), Some(deleted.seq));
    assert_eq!(q.deletion_pending("beta").unwrap(), None);
    assert_eq!(q.deletion_pending("never-was").unwrap(), None);
    let err = c.delete_relay("never-was").unwrap_err();
    assert!(format!("{err:#}").contains("there is no relay"), "{err:#}");

    // A failed attempt is recorded in the log and listed.
    c.fail_relay_sync("alpha", "zooid answered 500").unwrap();
    let listed = q.list_pending_deletions().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "alpha");
    assert_eq!(listed[0].sync_error, "zooid answered 500");
    assert_eq!(q.count_trailing_sync_failures("alpha").unwrap(), 1);

    // Created again before zooid confirmed the deletion: a new relay, nothing pending to
    // delete, and its old completion does not count.
    c.create_relay("alpha", &settings("alpha")).unwrap();
    assert_eq!(q.deletion_pending("alpha").unwrap(), None);
    assert!(q.list_pending_deletions().unwrap().is_empty());
    let found = q.get_relay_for_sync("alpha").unwrap().unwrap();
    assert!(
        !found.relay.synced && !found.ever_completed,
        "created again: it starts over"
    );
    assert!(c.complete_relay_sync("alpha", 1).unwrap());
    assert!(
        q.get_relay_for_sync("alpha")
            .unwrap()
            .unwrap()
            .ever_completed
    );
}
