//! Shared helpers for the integration tests: a throw-away database, a robot key the fixture
//! trusts, sample relays, and waiting on a condition with a deadline.
#![allow(dead_code)]

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use zooid_sync::fixture::FixtureZooid;
use zooid_sync::RetryPolicy;
use zooid_sync::{Env, RelaySettings, RelayStatus, RobotKey, Store};

pub const ROBOT_SECRET: &str = "5c0c523f52a5b6fad39ed2403092df8cebc36318b39383bca6c00808626fab3a";
/// A valid x-only public key to own test relays.
pub const OWNER: &str = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

pub fn robot() -> RobotKey {
    RobotKey::parse(ROBOT_SECRET).unwrap()
}

/// A fixture zooid (strict mode) that trusts the test robot.
pub fn fixture() -> FixtureZooid {
    FixtureZooid::start(&[robot().public_key().to_hex()]).unwrap()
}

/// An Env for `zooid_url` with S3 and LiveKit configured and millisecond retries.
pub fn env_for(zooid_url: &str) -> Env {
    let mut env = Env::new(zooid_url, "relays.example.com", robot()).unwrap();
    env.blossom.endpoint = Some("https://s3.example.com".into());
    env.blossom.region = Some("eu-west-1".into());
    env.blossom.bucket = Some("media".into());
    env.blossom.access_key = Some("AKIATEST".into());
    env.blossom.secret_key = Some(zooid_sync::Secret::new("s3-secret-value"));
    env.livekit.url = Some("wss://livekit.example.com".into());
    env.livekit.api_key = Some("lk-key".into());
    env.livekit.api_secret = Some(zooid_sync::Secret::new("lk-secret-value"));
    env.retry = RetryPolicy {
        base: Duration::from_millis(40),
        cap: Duration::from_millis(200),
        max_attempts: 3,
        jitter: false,
    };
    env.zooid_timeout = Duration::from_secs(2);
    env.sync_max_rate = 0.0; // tests that measure the ceiling set their own
    env.sync_zooid_share = 0.0; // and those that measure pacing, theirs
    env
}

/// A temporary directory and a database path inside it.
pub fn temp_db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zooid-sync.db");
    (dir, path)
}

pub fn open_store(path: &std::path::Path) -> Store {
    Store::open(path).unwrap()
}

/// Settings for a relay named after `schema`, served at `<schema>.relays.example.com`.
pub fn settings(schema: &str) -> RelaySettings {
    RelaySettings {
        tenant_pubkey: OWNER.into(),
        schema: schema.into(),
        subdomain: schema.replace('_', "-"),
        plan_id: "basic".into(),
        status: RelayStatus::Active,
        info_name: format!("Relay {schema}"),
        info_icon: format!("https://img.example.com/{schema}.png"),
        info_description: format!("The {schema} community"),
        policy_public_read: false,
        policy_public_write: false,
        policy_public_join: true,
        policy_strip_signatures: false,
        groups_enabled: true,
        management_enabled: true,
        members_can_invite: false,
        blossom_enabled: false,
        livekit_enabled: false,
        push_enabled: false,
        zooid: String::new(),
    }
}

/// Polls `condition` until it holds or `timeout` passes; answers whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Like [`wait_until`] but fails the test with `what` when the deadline passes.
#[track_caller]
pub fn expect_within(timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, condition),
        "timed out after {timeout:?} waiting for {what}"
    );
}

// ---------------------------------------------------------------------------------------------
// The binary, as a process.

/// `zooid-sync` with a clean environment aimed at `fx` and `db`: millisecond retries, no rate
/// ceiling, `RUST_LOG=debug`, no standard input. Callers add or override what they need.
pub fn zooid_sync(fx: &FixtureZooid, db: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zooid-sync"));
    cmd.env_clear()
        .env("ZOOID_API_URL", fx.url())
        .env("RELAY_DOMAIN", "relays.example.com")
        .env("ROBOT_SECRET", ROBOT_SECRET)
        .env("DATABASE_PATH", db)
        .env("SYNC_RETRY_BASE", "50ms")
        .env("SYNC_RETRY_CAP", "200ms")
        .env("SYNC_MAX_RATE", "0")
        .env("SYNC_ZOOID_SHARE", "0")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to the end and answers what it printed and how it exited.
pub fn output(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

/// `zooid-sync <args>` against `fx` and `db`, run to completion.
pub fn run_cli(fx: &FixtureZooid, db: &std::path::Path, args: &[&str]) -> Output {
    output({
        let mut c = zooid_sync(fx, db);
        c.args(args);
        c
    })
}

/// A fixture zooid and a fresh database (in a temporary directory, kept while the `TempDir`
/// lives) holding one relay, `id`, not synced yet; with the store open on it.
pub fn one_relay(id: &str) -> (FixtureZooid, tempfile::TempDir, std::path::PathBuf, Store) {
    let fx = fixture();
    let (dir, db) = temp_db();
    let store = open_store(&db);
    store.command.create_relay(id, &settings(id)).unwrap();
    (fx, dir, db, store)
}

/// `zooid-sync run` in the background (feed every 10 ms), optionally with `--listen` on
/// `port`; its output is dropped.
pub fn daemon(fx: &FixtureZooid, db: &std::path::Path, listen: Option<u16>) -> Child {
    let mut cmd = zooid_sync(fx, db);
    cmd.env("RUST_LOG", "info")
        .args(["run", "--feed-interval", "10ms"]);
    if let Some(port) = listen {
        cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGTERM, as systemd stops it, and wait for the exit.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// What a host in another language does to create a relay: one transaction, the relay row
/// (pending, revision 1) and its `create_relay` activity.
pub fn host_creates(conn: &Connection, id: &str) {
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    host_creates_in_transaction(conn, id);
    conn.execute_batch("COMMIT").unwrap();
}

/// [`host_creates`] inside a transaction the caller opened.
pub fn host_creates_in_transaction(conn: &Connection, id: &str) {
    conn.execute(
        "INSERT INTO relay (id, tenant_pubkey, schema, subdomain, status, info_name, groups_enabled,
                            synced, revision, created_at, updated_at)
         VALUES (?1, ?2, ?1, ?1, 'active', 'Made elsewhere', 1, 0, 1, 0, 0)",
        params![id, OWNER],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO activity (id, tenant_pubkey, created_at, activity_type, resource_type, resource_id)
         VALUES (lower(hex(randomblob(16))), ?1, 0, 'create_relay', 'relay', ?2)",
        params![OWNER, id],
    )
    .unwrap();
}

/// Waits up to `timeout` for `child` to exit by itself; its status, or `None` if it still runs.
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET http://127.0.0.1:<port><path>`: the status and body, `None` when nothing answered.
pub fn local_get(port: u16, path: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut r = agent
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.body_mut().read_to_string().ok()?))
}

/// What a host in another language does to delete a relay: one transaction, the row deleted
/// and a `delete_relay` activity.
pub fn host_deletes(conn: &Connection, id: &str) {
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn.execute(
        "INSERT INTO activity (id, tenant_pubkey, created_at, activity_type, resource_type, resource_id)
         VALUES (lower(hex(randomblob(16))), ?1, unixepoch(), 'delete_relay', 'relay', ?2)",
        params![OWNER, id],
    )
    .unwrap();
    assert_eq!(
        conn.execute("DELETE FROM relay WHERE id = ?1", params![id])
            .unwrap(),
        1,
        "relay {id} existed"
    );
    conn.execute_batch("COMMIT").unwrap();
}

/// Relay `id`'s name and `synced` flag, as the database has them.
pub fn name_and_synced(conn: &Connection, id: &str) -> (String, i64) {
    conn.query_row(
        "SELECT info_name, synced FROM relay WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// A connection to `db` as a host's own process holds it, waiting out the daemon's locks.
pub fn host_connection(db: &std::path::Path) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// What a host does to rename a relay: one transaction, the row (pending, its revision one
/// up) and an `update_relay` activity.
pub fn host_renames(conn: &Connection, id: &str, name: &str) {
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn.execute(
        "UPDATE relay SET info_name = ?2, synced = 0, revision = revision + 1 WHERE id = ?1",
        params![id, name],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO activity (id, tenant_pubkey, created_at, activity_type, resource_type, resource_id)
         VALUES (lower(hex(randomblob(16))), ?1, 0, 'update_relay', 'relay', ?2)",
        params![OWNER, id],
    )
    .unwrap();
    conn.execute_batch("COMMIT").unwrap();
}
