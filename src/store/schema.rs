//! The database schema and its migrations.
//!
//! Each migration moves the database from `PRAGMA user_version = n` to `n + 1` in one
//! transaction, so a database is always at a version this code knows. The result of all
//! migrations is the contract published as `fixtures/schema.sql`; a test checks the two agree.

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, TransactionBehavior};

/// Migration `i` takes the database from version `i` to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: relays and their activity log.
    "CREATE TABLE IF NOT EXISTS relay (
        id                      TEXT PRIMARY KEY NOT NULL,
        tenant_pubkey           TEXT NOT NULL,
        schema                  TEXT NOT NULL,
        subdomain               TEXT NOT NULL,
        plan_id                 TEXT NOT NULL DEFAULT '',
        status                  TEXT NOT NULL DEFAULT 'active',
        sync_error              TEXT NOT NULL DEFAULT '',
        synced                  INTEGER NOT NULL DEFAULT 0,
        info_name               TEXT NOT NULL DEFAULT '',
        info_icon               TEXT NOT NULL DEFAULT '',
        info_description        TEXT NOT NULL DEFAULT '',
        policy_public_read      INTEGER NOT NULL DEFAULT 0,
        policy_public_write     INTEGER NOT NULL DEFAULT 0,
        policy_public_join      INTEGER NOT NULL DEFAULT 0,
        policy_strip_signatures INTEGER NOT NULL DEFAULT 0,
        groups_enabled          INTEGER NOT NULL DEFAULT 0,
        management_enabled      INTEGER NOT NULL DEFAULT 0,
        members_can_invite      INTEGER NOT NULL DEFAULT 0,
        blossom_enabled         INTEGER NOT NULL DEFAULT 0,
        livekit_enabled         INTEGER NOT NULL DEFAULT 0,
        push_enabled            INTEGER NOT NULL DEFAULT 0,
        revision                INTEGER NOT NULL DEFAULT 1,
        created_at              INTEGER NOT NULL,
        updated_at              INTEGER NOT NULL,
        zooid                   TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE IF NOT EXISTS activity (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        id            TEXT UNIQUE NOT NULL,
        tenant_pubkey TEXT NOT NULL DEFAULT '',
        created_at    INTEGER NOT NULL,
        activity_type TEXT NOT NULL,
        resource_type TEXT NOT NULL,
        resource_id   TEXT NOT NULL,
        detail        TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX IF NOT EXISTS activity_resource
        ON activity (resource_type, resource_id, seq DESC);",
    // 2: zooid-sync's own record of a zooid outage (one row while zooid is unavailable).
    "CREATE TABLE IF NOT EXISTS zooid_outage (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        since      INTEGER NOT NULL,
        last_error TEXT NOT NULL DEFAULT ''
    );",
    // 3: manual syncs handed to the worker that holds the lease (`zooid-sync sync`).
    "CREATE TABLE IF NOT EXISTS sync_request (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        relay_id     TEXT NOT NULL,
        requested_at INTEGER NOT NULL,
        outcome      TEXT,
        detail       TEXT NOT NULL DEFAULT ''
    );",
    // 4: the relays waiting for a sync, oldest change first, without reading the others: the
    //    startup reconcile, `status` and the pending count cost what is pending, not the fleet.
    "CREATE INDEX IF NOT EXISTS relay_pending ON relay (updated_at, id) WHERE synced = 0;",
    // 5: the settings the worker that holds the lease runs with, so that `zooid-sync status`
    //    shows what that worker does, whatever the environment of the shell that asks.
    "CREATE TABLE IF NOT EXISTS worker_settings (
        name  TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );",
    // 6: the relays the host deleted, without reading the rest of the log: the startup
    //    reconcile and `status` find deletions zooid has not confirmed yet.
    "CREATE INDEX IF NOT EXISTS activity_deletion ON activity (resource_id, seq)
        WHERE activity_type = 'delete_relay';",
    // 7: several zooids. An outage is a zooid's: one row per zooid that is unavailable
    //    (the single row kept so far becomes the default zooid's). And where each relay lives
    //    at zooid, so that a deletion and a move reach the zooid the relay was synced to.
    "ALTER TABLE zooid_outage RENAME TO zooid_outage_of_one;
    CREATE TABLE zooid_outage (
        zooid      TEXT PRIMARY KEY NOT NULL,
        since      INTEGER NOT NULL,
        last_error TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO zooid_outage (zooid, since, last_error)
        SELECT 'default', since, last_error FROM zooid_outage_of_one;
    DROP TABLE zooid_outage_of_one;
    CREATE TABLE IF NOT EXISTS relay_placement (
        relay_id TEXT PRIMARY KEY NOT NULL,
        zooid    TEXT NOT NULL,
        leaving  TEXT NOT NULL DEFAULT ''
    );",
];

/// The version a fully migrated database has.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The database's schema version (`PRAGMA user_version`).
pub fn version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Refuses a database that is not at [`SCHEMA_VERSION`], for commands that only read and so
/// cannot migrate it.
pub fn require_current(conn: &Connection) -> Result<()> {
    match version(conn)? {
        SCHEMA_VERSION => Ok(()),
        v if v > SCHEMA_VERSION => bail!(
            "the database is at schema version {v}, newer than this zooid-sync understands \
             ({SCHEMA_VERSION}); upgrade zooid-sync"
        ),
        v => bail!(
            "the database is at schema version {v}, older than this zooid-sync's \
             ({SCHEMA_VERSION}); start `zooid-sync run` once to bring it up to date"
        ),
    }
}

/// Brings the database up to [`SCHEMA_VERSION`]. Refuses a database from a newer zooid-sync,
/// and one whose version is negative (no migration would run, and it would be left without
/// tables).
pub fn migrate(conn: &mut Connection) -> Result<()> {
    // A current database is only read: no write lock is taken and nothing is written, so a
    // start never waits for a host that holds the lock.
    if version(conn)? == SCHEMA_VERSION {
        return check_contract(conn);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Tables the host made itself must hold the contract's columns before anything is added
    // beside them or a version is stamped on them.
    check_contract(&tx)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        bail!(
            "the database is at schema version {version}, newer than this zooid-sync \
             understands ({SCHEMA_VERSION}); upgrade zooid-sync"
        );
    }
    if version < 0 {
        bail!(
            "the database has schema version {version} (PRAGMA user_version), which no \
             zooid-sync ever wrote; refusing to touch it"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)
            .with_context(|| format!("migrating the database to schema version {}", i + 1))?;
    }
    check_contract(&tx)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// The columns of the host's tables that zooid-sync reads or writes: the database contract.
pub const CONTRACT: [(&str, &[&str]); 2] = [
    (
        "relay",
        &[
            "id",
            "tenant_pubkey",
            "schema",
            "subdomain",
            "plan_id",
            "status",
            "sync_error",
            "synced",
            "info_name",
            "info_icon",
            "info_description",
            "policy_public_read",
            "policy_public_write",
            "policy_public_join",
            "policy_strip_signatures",
            "groups_enabled",
            "management_enabled",
            "members_can_invite",
            "blossom_enabled",
            "livekit_enabled",
            "push_enabled",
            "revision",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "activity",
        &[
            "seq",
            "id",
            "tenant_pubkey",
            "created_at",
            "activity_type",
            "resource_type",
            "resource_id",
            "detail",
        ],
    ),
];

/// Whether the host's table `table` has column `column`: how zooid-sync learns whether the
/// `relay` table has the optional `zooid` column (which zooid serves the relay; `''` or no
/// column: `ZOOID_API_URL`'s). A database zooid-sync creates has it; a host adds it to its own
/// table to use several zooids.
pub fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let present: Vec<String> = stmt
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(present.iter().any(|p| p.eq_ignore_ascii_case(column)))
}

/// Refuses host tables that lack a column of the contract, naming each one missing. A table
/// that does not exist yet is fine: the migrations create it.
pub fn check_contract(conn: &Connection) -> Result<()> {
    let mut missing = Vec::new();
    for (table, columns) in CONTRACT {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let present: Vec<String> = stmt
            .query_map([table], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if present.is_empty() {
            continue;
        }
        missing.extend(
            columns
                .iter()
                .filter(|c| !present.iter().any(|p| p.eq_ignore_ascii_case(c)))
                .map(|c| format!("{table}.{c}")),
        );
    }
    if !missing.is_empty() {
        bail!(
            "the database does not hold the contract's columns: {} missing. Add them as \
             fixtures/schema.sql (README, \"The database contract\") defines them; nothing was \
             changed",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(conn: &Connection, table: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM pragma_table_info(?1)")
            .unwrap();
        stmt.query_map([table], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn the_contract_names_every_column_of_the_hosts_tables() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        for (table, contract) in CONTRACT {
            // A relay table zooid-sync creates has the optional `zooid` column too.
            let optional = (table == "relay").then_some("zooid");
            let expected: Vec<&str> = contract.iter().copied().chain(optional).collect();
            assert_eq!(columns(&conn, table), expected, "{table}");
        }
        assert!(has_column(&conn, "relay", "zooid").unwrap());
        assert!(!has_column(&conn, "relay", "nothing").unwrap());
    }

    #[test]
    fn host_tables_without_a_contract_column_are_refused_by_name_and_left_unstamped() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE relay (id TEXT PRIMARY KEY, tenant_pubkey TEXT, schema TEXT,
                                 subdomain TEXT, status TEXT, synced INTEGER);",
        )
        .unwrap();
        let error = format!("{:#}", migrate(&mut conn).unwrap_err());
        for column in ["relay.revision", "relay.sync_error", "relay.updated_at"] {
            assert!(error.contains(column), "{error}");
        }
        assert!(
            !error.contains("activity."),
            "activity does not exist yet: {error}"
        );
        assert_eq!(version(&conn).unwrap(), 0, "no version stamped");
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 1, "nothing created beside it");
    }
}
