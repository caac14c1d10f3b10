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
        updated_at              INTEGER NOT NULL
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
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}
