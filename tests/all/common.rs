//! Shared helpers for the integration tests: a throw-away database, a robot key the fixture
//! trusts, sample relays, and waiting on a condition with a deadline.
#![allow(dead_code)]

use std::time::{Duration, Instant};

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
pub fn env_for(zooid_url: &str, db: &std::path::Path) -> Env {
    let mut env = Env::new(zooid_url, "relays.example.com", robot()).unwrap();
    env.database_path = db.to_path_buf();
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
